"""The subcommands and flags of kind, kubectl and docker that scripts/kind-*.sh may use, as
documented for the versions the scripts are written for. Only the commands the scripts need
are listed, each with its documented flags (long and short forms); a flag maps to whether it
takes a value. tests/k8s/test_kind_scripts.py checks every invocation in the scripts against
these tables (and the kubectl ones against the real `kubectl <command> --help` as well).

Sources:
- kind v0.29 (the release whose node image k8s/kind/cluster.yaml pins): the cobra command
  definitions in kubernetes-sigs/kind, pkg/cmd/kind/ (root.go: persistent flags;
  create/cluster/createcluster.go; delete/cluster/deletecluster.go; get/clusters/clusters.go;
  load/docker-image/docker-image.go; version/version.go), and the kind quick start
  (kind.sigs.k8s.io/docs/user/quick-start).
- kubectl 1.32: the kubectl command reference (kubernetes.io/docs/reference/kubectl/) and
  `kubectl options` / `kubectl <command> --help` of kubectl v1.32.
- docker 27: the Docker CLI reference (docs.docker.com/reference/cli/docker/): `docker` global
  options, `docker build` (an alias of `docker buildx build` since Docker 23) and `docker info`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Command:
    """A command: its flags (name -> takes a value) and subcommands."""

    flags: Mapping[str, bool] = field(default_factory=dict)
    subcommands: Mapping[str, Command] = field(default_factory=dict)
    runnable: bool = True
    """False for a group such as `kind create`, which only holds subcommands."""


@dataclass(frozen=True)
class Tool:
    name: str
    version: str
    global_flags: Mapping[str, bool]
    root: Command


def group(**subcommands: Command) -> Command:
    return Command(subcommands=subcommands, runnable=False)


KIND = Tool(
    name="kind",
    version="v0.29",
    global_flags={
        "--verbosity": True,
        "-v": True,
        "--quiet": False,
        "-q": False,
        "--loglevel": True,
        "--help": False,
        "-h": False,
    },
    root=group(
        create=group(
            cluster=Command(
                {
                    "--name": True,
                    "-n": True,
                    "--config": True,
                    "--image": True,
                    "--retain": False,
                    "--wait": True,
                    "--kubeconfig": True,
                }
            )
        ),
        delete=group(cluster=Command({"--name": True, "-n": True, "--kubeconfig": True})),
        get=group(
            clusters=Command(),
            nodes=Command({"--name": True, "-n": True, "--all-clusters": False, "-A": False}),
            kubeconfig=Command({"--name": True, "-n": True, "--internal": False}),
        ),
        load=group(
            **{
                "docker-image": Command({"--name": True, "-n": True, "--nodes": True}),
                "image-archive": Command({"--name": True, "-n": True, "--nodes": True}),
            }
        ),
        version=Command(),
    ),
)

_OUTPUT = {"--output": True, "-o": True}
_FILES = {
    "--filename": True,
    "-f": True,
    "--kustomize": True,
    "-k": True,
    "--recursive": False,
    "-R": False,
}
_SELECTOR = {"--selector": True, "-l": True}
_DRY_RUN = {"--dry-run": True}
_FROM_DATA = {
    "--from-file": True,
    "--from-literal": True,
    "--from-env-file": True,
    "--save-config": False,
    "--append-hash": False,
}

KUBECTL = Tool(
    name="kubectl",
    version="1.32",
    global_flags={
        "--context": True,
        "--namespace": True,
        "-n": True,
        "--kubeconfig": True,
        "--cluster": True,
        "--user": True,
        "--request-timeout": True,
        "-v": True,
        "--help": False,
        "-h": False,
    },
    root=group(
        apply=Command(
            {
                **_FILES,
                **_OUTPUT,
                **_SELECTOR,
                **_DRY_RUN,
                "--server-side": False,
                "--field-manager": True,
                "--force-conflicts": False,
                "--prune": False,
                "--wait": False,
            }
        ),
        create=group(
            namespace=Command({**_OUTPUT, **_DRY_RUN}),
            configmap=Command({**_OUTPUT, **_DRY_RUN, **_FROM_DATA}),
            secret=group(
                generic=Command({**_OUTPUT, **_DRY_RUN, **_FROM_DATA, "--type": True}),
            ),
        ),
        get=Command(
            {
                **_OUTPUT,
                **_SELECTOR,
                "--all-namespaces": False,
                "-A": False,
                "--field-selector": True,
                "--show-labels": False,
                "--watch": False,
                "-w": False,
            }
        ),
        rollout=group(
            status=Command(
                {
                    **_FILES,
                    **_SELECTOR,
                    "--timeout": True,
                    "--watch": False,
                    "-w": False,
                    "--revision": True,
                }
            ),
            restart=Command({**_FILES, **_SELECTOR, **_OUTPUT, "--field-manager": True}),
        ),
        wait=Command(
            {
                "--filename": True,
                "-f": True,
                "--recursive": False,
                "-R": False,
                **_SELECTOR,
                "--for": True,
                "--timeout": True,
                "--all": False,
            }
        ),
        kustomize=Command({**_OUTPUT}),
    ),
)

DOCKER = Tool(
    name="docker",
    version="27",
    global_flags={
        "--context": True,
        "-c": True,
        "--host": True,
        "-H": True,
        "--config": True,
        "--debug": False,
        "-D": False,
        "--log-level": True,
        "-l": True,
        "--help": False,
    },
    root=group(
        build=Command(
            {
                "--tag": True,
                "-t": True,
                "--file": True,
                "-f": True,
                "--build-arg": True,
                "--target": True,
                "--platform": True,
                "--pull": False,
                "--no-cache": False,
                "--progress": True,
                "--label": True,
                "--load": False,
                "--iidfile": True,
                "--quiet": False,
                "-q": False,
            }
        ),
        info=Command({"--format": True, "-f": True}),
        image=group(inspect=Command({"--format": True, "-f": True})),
    ),
)

TOOLS = {tool.name: tool for tool in (KIND, KUBECTL, DOCKER)}
