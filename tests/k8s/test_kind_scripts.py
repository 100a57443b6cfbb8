"""scripts/kind-*.sh, checked without Docker or a cluster: shellcheck clean; every kind, kubectl
and docker invocation uses only subcommands and flags those tools document (the tables in
tests/support/kind_reference.py; kubectl's also against the real binary's --help), and every
grpcurl flag is one the real grpcurl has; the scripts, the kind cluster config and the kind
overlay agree on the cluster's ports, namespace, image and Secrets; kind-smoke.sh takes a new
user's steps (grpcurl list without -authority, the storefront, a gRPC-Web call, sign-in before
every call that needs it); and kind-up.sh prints the gateway commands `make up` prints.
tests/mesh/test_gateway.py runs kind-smoke.sh itself, against the local mesh's gateway."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from shopmesh.connection_help import gateway_help
from shopmesh.gatewayclient import GatewayTarget
from shopmesh.k8s.collector import COLLECTOR, UI_PORT
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.objects import APP_IMAGE
from shopmesh.terminal import tool
from shopmesh.topology import GATEWAY
from tests.support.k8s import Rendered, kubectl
from tests.support.kind_reference import KUBECTL, TOOLS, Command, Tool
from tests.support.paths import GRPCURL, ROOT, TOPOLOGY

SCRIPTS = ROOT / "scripts"
KIND_SCRIPTS = sorted(SCRIPTS.glob("kind-*.sh"))
CLUSTER_CONFIG = ROOT / "k8s" / "kind" / "cluster.yaml"
KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "exec", "{"}
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")

SHELLCHECK_MISSING = (
    "shellcheck not found on PATH: the kind scripts must be shellcheck clean. Install it: "
    "`apt-get install shellcheck` (Debian/Ubuntu), `brew install shellcheck` (macOS), or see "
    "https://github.com/koalaman/shellcheck#installing"
)


def test_the_kind_scripts_exist() -> None:
    names = {p.name for p in KIND_SCRIPTS}
    assert {"kind-up.sh", "kind-smoke.sh", "kind-down.sh", "kind-lib.sh"} <= names


def test_the_kind_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(SHELLCHECK_MISSING, pytrace=False)
    result = subprocess.run(
        [shellcheck, "--external-sources", *(str(p.relative_to(ROOT)) for p in KIND_SCRIPTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- finding the invocations ----------------------------------------------------------------


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) with continuations joined, comments and here-documents left out
    (here-documents are text to print or another language's code)."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index]
        index += 1
        while line.endswith("\\") and index < len(lines):
            line = line[:-1] + " " + lines[index].strip()
            index += 1
        if line.strip().startswith("#"):
            continue
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
        if heredoc:
            while index < len(lines) and lines[index].strip() != heredoc[1]:
                index += 1
            index += 1
        yield number, line


def simple_commands(line: str) -> Iterator[str]:
    """The simple commands in one line of shell: split at unquoted | ; & ( ), with each
    command substitution $( ) yielded as commands of its own."""
    current = ""
    index = 0
    quote = ""
    while index < len(line):
        char = line[index]
        if quote == "'":
            current += char
            quote = "" if char == "'" else quote
        elif char == "\\":
            current += line[index : index + 2]
            index += 1
        elif line.startswith("$(", index):
            depth, end, inner_quote = 1, index + 2, ""
            while end < len(line) and depth:
                c = line[end]
                if inner_quote:
                    inner_quote = "" if c == inner_quote else inner_quote
                elif c in "'\"":
                    inner_quote = c
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                end += 1
            yield from simple_commands(line[index + 2 : end - 1])
            current += "SUBSTITUTION"
            index = end - 1
        elif quote == '"':
            current += char
            quote = "" if char == '"' else quote
        elif char in "'\"":
            current += char
            quote = char
        elif char in "|;&()":
            yield current
            current = ""
        else:
            current += char
        index += 1
    yield current


@dataclass(frozen=True)
class Invocation:
    where: str
    tool: str
    words: tuple[str, ...]


def commands(script: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, words) of every simple command the script runs, keywords and variable
    assignments before the command name left out."""
    for number, line in logical_lines(script.read_text()):
        for command in simple_commands(line):
            try:
                words = shlex.split(command)
            except ValueError as error:
                raise AssertionError(f"{script.name}:{number}: cannot parse {command!r}") from error
            while words and (words[0] in KEYWORDS or ASSIGNMENT.match(words[0])):
                words = words[1:]
            if words:
                yield number, words


def invocations(script: Path) -> list[Invocation]:
    """Every kind, kubectl and docker command the script runs."""
    return [
        Invocation(f"{script.name}:{number}", words[0], tuple(words[1:]))
        for number, words in commands(script)
        if words[0] in TOOLS
    ]


ALL_INVOCATIONS = [i for script in KIND_SCRIPTS for i in invocations(script)]


@dataclass(frozen=True)
class Checked:
    path: tuple[str, ...]
    flags: tuple[str, ...]
    errors: tuple[str, ...]


def check(tool: Tool, words: tuple[str, ...]) -> Checked:
    """Walk `words` down the tool's command tree; report unknown flags and incomplete groups."""
    node = tool.root
    path: list[str] = []
    flags: list[str] = []
    errors: list[str] = []
    descending = True
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            name, equals, _ = word.partition("=")
            allowed = {**tool.global_flags, **node.flags}
            flags.append(name)
            if name not in allowed:
                errors.append(f"{tool.name} {' '.join(path)}: no flag {name} in {tool.version}")
            elif allowed[name] and not equals:
                index += 1
        elif descending and word in node.subcommands:
            node = node.subcommands[word]
            path.append(word)
        else:
            descending = False
        index += 1
    if not node.runnable:
        errors.append(f"{tool.name} {' '.join(path)}: needs a subcommand")
    return Checked(tuple(path), tuple(flags), tuple(errors))


def test_the_scripts_run_the_expected_commands() -> None:
    used = {(i.tool, *check(TOOLS[i.tool], i.words).path) for i in ALL_INVOCATIONS}
    assert {
        ("kind", "create", "cluster"),
        ("kind", "get", "clusters"),
        ("kind", "load", "docker-image"),
        ("kind", "delete", "cluster"),
        ("docker", "info"),
        ("docker", "build"),
        ("kubectl", "apply"),
        ("kubectl", "create", "secret", "generic"),
        ("kubectl", "get"),
        ("kubectl", "rollout", "status"),
        ("kubectl", "rollout", "restart"),
    } <= used


@pytest.mark.parametrize("invocation", ALL_INVOCATIONS, ids=lambda i: f"{i.where}-{i.tool}")
def test_every_invocation_uses_documented_subcommands_and_flags(invocation: Invocation) -> None:
    checked = check(TOOLS[invocation.tool], invocation.words)
    assert not checked.errors, f"{invocation.where}: {checked.errors}"


def test_every_kubectl_call_names_the_kind_context() -> None:
    for invocation in ALL_INVOCATIONS:
        if invocation.tool == "kubectl":
            words = invocation.words
            assert words[:2] == ("--context", "$CONTEXT"), invocation.where


# --- kubectl, against the real binary -------------------------------------------------------

HELP_FLAG = re.compile(r"^\s+(?:(-\w), )?(--[\w-]+)=", re.MULTILINE)


@cache
def real_flags(*path: str) -> frozenset[str]:
    """The flags `kubectl <path> --help` and `kubectl options` list."""
    flags: set[str] = set()
    for command in ([*path, "--help"], ["options"]):
        result = subprocess.run(
            [kubectl(), *command], capture_output=True, text=True, timeout=30, check=True
        )
        for short, long in HELP_FLAG.findall(result.stdout):
            flags.update(f for f in (short, long) if f)
    return frozenset(flags)


def kubectl_commands() -> Iterator[tuple[str, ...]]:
    def walk(path: tuple[str, ...], node: object) -> Iterator[tuple[str, ...]]:

        assert isinstance(node, Command)
        if node.runnable:
            yield path
        for name, child in node.subcommands.items():
            yield from walk((*path, name), child)

    yield from walk((), KUBECTL.root)


def test_the_scripts_kubectl_flags_exist_in_the_real_kubectl() -> None:
    for invocation in ALL_INVOCATIONS:
        if invocation.tool != "kubectl":
            continue
        checked = check(KUBECTL, invocation.words)
        missing = set(checked.flags) - real_flags(*checked.path) - {"-h", "--help"}
        assert not missing, f"{invocation.where}: kubectl {' '.join(checked.path)} {missing}"


def test_the_kubectl_table_matches_the_real_kubectl() -> None:
    for path in kubectl_commands():
        node = KUBECTL.root
        for name in path:
            node = node.subcommands[name]
        documented = set(node.flags) | set(KUBECTL.global_flags)
        missing = documented - real_flags(*path) - {"-h", "--help"}
        assert not missing, f"kubectl {' '.join(path)}: {missing}"


# --- the scripts, the cluster config and the overlay agree ----------------------------------


def settings() -> dict[str, str]:
    """The assignments of scripts/kind-lib.sh (a `${VAR:-default}` gives its default)."""
    values = {}
    for line in (SCRIPTS / "kind-lib.sh").read_text().splitlines():
        match = re.fullmatch(r'([A-Z_]+)="(.*)"', line.strip())
        if match:
            value = match[2]
            default = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
            values[match[1]] = default[1] if default else value
    return values


def test_the_scripts_use_the_topology_namespace_and_the_kind_overlay_image(
    rendered: dict[str, Rendered],
) -> None:
    values = settings()
    assert values["NAMESPACE"] == TOPOLOGY.namespace
    images = {
        c["image"]
        for w in rendered["kind"].workloads()
        for c in w["spec"]["template"]["spec"]["containers"]
        + w["spec"]["template"]["spec"].get("initContainers", [])
    }
    assert values["IMAGE"] in images
    assert values["IMAGE"].startswith(f"{APP_IMAGE}:")
    assert values["CONTEXT"] == "kind-${CLUSTER}"


def test_the_scripts_create_the_secrets_the_pods_mount() -> None:
    up = (SCRIPTS / "kind-up.sh").read_text()
    assert 'create secret generic "tls-${identity}"' in up
    assert KubernetesLayout(TOPOLOGY).tls_secret("users") == "tls-users"


def cluster_config() -> dict[str, object]:
    config: dict[str, object] = yaml.safe_load(CLUSTER_CONFIG.read_text())
    return config


KIND_V1ALPHA4 = {
    "cluster": {
        "kind",
        "apiVersion",
        "name",
        "nodes",
        "networking",
        "featureGates",
        "runtimeConfig",
        "kubeadmConfigPatches",
        "kubeadmConfigPatchesJSON6902",
        "containerdConfigPatches",
        "containerdConfigPatchesJSON6902",
    },
    "node": {
        "role",
        "image",
        "labels",
        "extraMounts",
        "extraPortMappings",
        "kubeadmConfigPatches",
        "kubeadmConfigPatchesJSON6902",
    },
    "portMapping": {"containerPort", "hostPort", "listenAddress", "protocol"},
}
"""The fields of kind's v1alpha4 Cluster config (kubernetes-sigs/kind
pkg/apis/config/v1alpha4/types.go), as far as the config uses them."""


def test_the_kind_cluster_config_uses_only_kind_v1alpha4_fields() -> None:
    config = cluster_config()
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["kind"] == "Cluster"
    assert set(config) <= KIND_V1ALPHA4["cluster"]
    nodes = config["nodes"]
    assert isinstance(nodes, list)
    for node in nodes:
        assert set(node) <= KIND_V1ALPHA4["node"]
        assert node["role"] in ("control-plane", "worker")
        assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"])
        for mapping in node.get("extraPortMappings", []):
            assert set(mapping) <= KIND_V1ALPHA4["portMapping"]


def test_the_gateway_is_reachable_where_the_scripts_expect_it(
    rendered: dict[str, Rendered],
) -> None:
    nodes = cluster_config()["nodes"]
    assert isinstance(nodes, list)
    [mapping] = nodes[0]["extraPortMappings"]
    service = rendered["kind"].named("Service", GATEWAY)
    [port] = service["spec"]["ports"]
    assert mapping["containerPort"] == port["nodePort"]
    assert settings()["GATEWAY"] == f"{mapping['listenAddress']}:{mapping['hostPort']}"


def test_the_makefile_runs_the_kind_scripts() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("kind-up", "kind-smoke", "kind-down"):
        assert re.search(rf"^{target}:.*\n\tbash scripts/{target}\.sh$", makefile, re.MULTILINE)


def test_kind_up_adds_the_observability_component_only_on_request() -> None:
    values = settings()
    assert values["OBSERVABILITY"] == "0"
    assert values["KIND_OVERLAY"] == "k8s/overlays/kind"
    assert values["OBSERVABILITY_OVERLAY"] == "k8s/overlays/kind-observability"
    for overlay in (values["KIND_OVERLAY"], values["OBSERVABILITY_OVERLAY"]):
        assert (ROOT / overlay / "kustomization.yaml").is_file(), overlay
    up = (SCRIPTS / "kind-up.sh").read_text()
    assert 'overlay="$OBSERVABILITY_OVERLAY"' in up
    assert 'apply --kustomize "$overlay"' in up
    # The way to the traces it prints: the collector Service's UI port, forwarded.
    assert f"port-forward service/{COLLECTOR}" in up
    assert values["TRACES_UI"] == f"127.0.0.1:{UI_PORT}"
    assert "OBSERVABILITY=1" in (ROOT / "Makefile").read_text()


# --- what the scripts do and print at the gateway (grpcurl, curl) ---------------------------

SMOKE = SCRIPTS / "kind-smoke.sh"
GRPC_METHOD = re.compile(r"[\w.]+/\w+")
GRPCURL_HELP_FLAG = re.compile(r"^\s+(-[\w-]+)", re.MULTILINE)
REDIRECTION = re.compile(r"^\d*[<>]")


def runs(script: Path, program: str) -> list[tuple[str, tuple[str, ...]]]:
    """(where, arguments) of every command of `script` that runs `program`, named as the
    script names it (`$GRPCURL`, `curl`); redirections left out."""
    return [
        (
            f"{script.name}:{number}",
            tuple(w for w in words[1:] if not REDIRECTION.match(w)),
        )
        for number, words in commands(script)
        if words[0] == program
    ]


def printed_by_kind_up() -> str:
    """What kind-up.sh prints once the rollouts are done (its first here-document), expanded
    by bash with the settings of kind-lib.sh and grpcurl and node named as `make up` names
    them."""
    [body] = re.findall(
        r"^cat <<EOT\n(.*?)^EOT$", (SCRIPTS / "kind-up.sh").read_text(), re.M | re.S
    )
    result = subprocess.run(
        ["bash", "-c", f"source scripts/kind-lib.sh\ncat <<EOT\n{body}EOT\n"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "GRPCURL": tool("grpcurl"), "NODE": tool("node")},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_no_script_picks_a_virtual_host_with_authority() -> None:
    # The gateway's reflection service answers for the whole API and the default virtual host
    # routes every public method: -authority is needed for nothing a user does.
    for script in KIND_SCRIPTS:
        for where, arguments in runs(script, "$GRPCURL"):
            assert "-authority" not in arguments, where
    assert "-authority" not in printed_by_kind_up()


def test_kind_smoke_lists_the_api_as_a_new_user_does() -> None:
    lists = [arguments for _, arguments in runs(SMOKE, "$GRPCURL") if arguments[-1] == "list"]
    assert lists == [("-plaintext", "$GATEWAY", "list")]
    # ... and checks the listing against the topology's exposed services.
    assert 'exposed="$(exposed_services)"' in SMOKE.read_text()
    assert "load_topology(" in SMOKE.read_text()


def test_kind_smoke_gets_the_storefront() -> None:
    [get] = [arguments for _, arguments in runs(SMOKE, "curl") if "http://$GATEWAY/" in arguments]
    assert not {"-X", "-d", "--data", "--data-binary"} & set(get), "a plain GET"
    assert get[get.index("-w") + 1] == "%{http_code} %{content_type}"
    assert '[[ "$answer" == "200 text/html"* ]]' in SMOKE.read_text()


def test_kind_smoke_calls_over_grpc_web() -> None:
    [call] = [
        arguments
        for _, arguments in runs(SMOKE, "curl")
        if any(a.endswith("/shop.inventory.v1.InventoryService/ListProducts") for a in arguments)
    ]
    assert call[call.index("-H") + 1] == "content-type: application/grpc-web+proto"
    assert call[call.index("--data-binary") + 1] == "@-"
    text = SMOKE.read_text()
    # One empty message, framed; the answer's grpc-status (trailer frame or headers) must be 0.
    assert "printf '\\0\\0\\0\\0\\0' |" in text
    assert 'read -r status messages <<<"$(grpc_web "$headers" "$reply")"' in text
    assert '[[ "$status" == 0 && "$messages" == 1 ]]' in text


def test_kind_smoke_signs_in_before_every_call_that_needs_a_shopper() -> None:
    public = {
        f"{TOPOLOGY.services[service].grpc_service}/{method}"
        for service, methods in TOPOLOGY.gateway.sign_in.public.items()
        for method in methods
    }
    signed_in, authenticated = False, 0
    for where, arguments in runs(SMOKE, "$GRPCURL"):
        method = next((a for a in arguments if GRPC_METHOD.fullmatch(a)), None)
        if method is None:
            continue
        if method in public:
            signed_in = signed_in or method.endswith("/SignIn")
            continue
        assert signed_in, f"{where}: {method} before SignIn"
        assert arguments[arguments.index("-H") + 1] == "authorization: Bearer $token", where
        authenticated += 1
    assert authenticated, "kind-smoke.sh makes no call that needs a signed-in shopper"


def test_the_scripts_grpcurl_flags_exist_in_grpcurl() -> None:
    result = subprocess.run(
        [str(GRPCURL), "-help"], capture_output=True, text=True, timeout=30, check=False
    )
    flags = set(GRPCURL_HELP_FLAG.findall(result.stdout + result.stderr))
    assert {"-plaintext", "-d", "-H"} <= flags, result.stderr
    for script in KIND_SCRIPTS:
        for where, arguments in runs(script, "$GRPCURL"):
            used = {a for a in arguments if re.fullmatch(r"-[a-z][\w-]*", a)}
            assert used <= flags, f"{where}: grpcurl 1.8.6 has no {used - flags}"


def test_kind_up_prints_the_gateway_commands_make_up_prints() -> None:
    printed = printed_by_kind_up()
    gateway = settings()["GATEWAY"]

    assert "\n".join(gateway_help(GatewayTarget(gateway))) in printed
    assert f"\n  http://{gateway}/\n" in printed
