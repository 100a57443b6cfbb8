# Shared settings and checks of scripts/kind-{up,smoke,down}.sh (sourced, not run).
# Tested offline by tests/k8s/test_kind_scripts.py: shellcheck, and every kind, kubectl and
# docker subcommand and flag checked against those tools' documentation (grpcurl's against
# grpcurl itself); tests/mesh/test_gateway.py runs kind-smoke.sh against a local gateway.
# shellcheck shell=bash
# The settings are used by the scripts that source this file:
# shellcheck disable=SC2034

CLUSTER="${SHOPMESH_KIND_CLUSTER:-shopmesh}"
# kind names the kubeconfig context of cluster NAME `kind-NAME`; every kubectl call names it,
# so nothing here ever touches another cluster, whatever the current context is.
CONTEXT="kind-${CLUSTER}"
# The topology's namespace (envoy/mesh.yaml) and the image the kind overlay deploys.
NAMESPACE="shop"
IMAGE="shopmesh:dev"
# The gateway on the host: k8s/kind/cluster.yaml maps it to the NodePort of the kind overlay.
# SHOPMESH_KIND_GATEWAY points the scripts at another one (tests/mesh/test_gateway.py runs
# kind-smoke.sh against the local mesh's gateway).
GATEWAY="${SHOPMESH_KIND_GATEWAY:-127.0.0.1:30080}"
# What kind-up.sh applies: the kind overlay, or (OBSERVABILITY=1, `make kind-up OBSERVABILITY=1`)
# the kind overlay with the observability component (k8s/README.md, "Observability").
KIND_OVERLAY="k8s/overlays/kind"
OBSERVABILITY_OVERLAY="k8s/overlays/kind-observability"
OBSERVABILITY="${OBSERVABILITY:-0}"
# The trace collector's UI, reached with kubectl port-forward (no NetworkPolicy admits it).
TRACES_UI="127.0.0.1:16686"
PYTHON="${PYTHON:-.venv/bin/python}"
SHOPMESH="${SHOPMESH:-.venv/bin/shopmesh}"
GRPCURL="${GRPCURL:-.venv/bin/grpcurl}"
NODE="${NODE:-.venv/bin/node}"
# Everything scripts/kind-up.sh writes (the CA, the Secrets' files); never committed (var/).
STATE_DIR="var/k8s"

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

require_docker() {
    command -v docker >/dev/null 2>&1 || die "docker not found. Install Docker Engine \
(https://docs.docker.com/engine/install/) or Docker Desktop, then rerun."
    docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 || die "docker is installed but \
its daemon is not reachable: start it (sudo systemctl start docker, or Docker Desktop) and make \
sure your user may use it (docker info)."
}

KIND_HOWTO="Install kind v0.29 or newer: 'go install sigs.k8s.io/kind@v0.29.0', \
'brew install kind', or a release binary from \
https://kind.sigs.k8s.io/docs/user/quick-start/#installation"

require_kind() {
    command -v kind >/dev/null 2>&1 || die "kind not found. $KIND_HOWTO"
    local version
    version="$(kind version)"
    # k8s/kind/cluster.yaml pins the node image built for kind v0.29.
    if [[ "$version" =~ kind\ v0\.([0-9]+)\. ]] && ((BASH_REMATCH[1] < 29)); then
        die "found $version, too old for k8s/kind/cluster.yaml. $KIND_HOWTO"
    fi
}

require_kubectl() {
    command -v kubectl >/dev/null 2>&1 || die "kubectl not found. Install kubectl 1.32 or newer: \
https://kubernetes.io/docs/tasks/tools/ (it includes kustomize)."
}

require_venv() {
    [ -x "$PYTHON" ] || die "$PYTHON not found: run 'make generate' first (or set PYTHON)."
    [ -x "$SHOPMESH" ] || die "$SHOPMESH not found: run 'make generate' first (or set SHOPMESH)."
}

cluster_exists() {
    kind get clusters 2>/dev/null | grep -qx "$CLUSTER"
}
