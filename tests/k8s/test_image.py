"""The Dockerfile, checked without a Docker engine: its COPY sources exist and get through
.dockerignore, its base image is pinned by digest, it runs as a numeric non-root user that the
manifests agree on, its entrypoint plus each Deployment's args is a service module, and the
wheel it installs declares every distribution the services import (its runtime stage has
nothing else) and ships their data files."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import shlex
import site
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.objects import APP_IMAGE, RUN_AS
from shopmesh.topology import GATEWAY
from tests.support.k8s import Rendered, all_containers, pod_spec
from tests.support.paths import ROOT, TOPOLOGY

DESCRIPTOR_IN_IMAGE = KubernetesLayout(TOPOLOGY).descriptor_in_image

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "a continuation line runs off the end of the Dockerfile"
    parsed = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        parsed.append(Instruction(keyword.upper(), arguments.strip()))
    return parsed


INSTRUCTIONS = instructions(DOCKERFILE.read_text())


def of(keyword: str) -> list[str]:
    return [i.arguments for i in INSTRUCTIONS if i.keyword == keyword]


def copy_sources() -> list[str]:
    """Sources of every COPY from the build context (not --from another stage)."""
    sources = []
    for arguments in of("COPY"):
        words = shlex.split(arguments)
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is_exception, pattern) in order; the last match decides."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*|\*|\?)", pattern):
            regex += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((exception, re.compile(regex)))
    return rules


def in_context(path: str) -> bool:
    """Whether Docker sends `path` (relative, a file) in the build context. As in Docker, a
    pattern that matches a parent directory matches everything in it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for exception, pattern in ignore_rules():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = exception
    return included


def files_under(source: str) -> list[str]:
    path = ROOT / source
    if path.is_file():
        return [source]
    return [
        str(p.relative_to(ROOT))
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert sources
    for source in sources:
        files = files_under(source)
        assert files, f"COPY {source}: nothing there"
        missing = [f for f in files if not in_context(f)]
        assert not missing, f"COPY {source}: .dockerignore keeps out {missing[:5]}"


def test_the_build_context_keeps_out_keys_databases_and_the_venv() -> None:
    for path in (
        "var/certs/ca/ca-key.pem",
        "var/data/orders.db",
        ".venv/bin/python",
        "gen/shop.pb",
    ):
        assert not in_context(path), path


def test_the_image_packages_every_service_and_the_descriptor_set() -> None:
    sources = set(copy_sources())
    assert {"services/", "proto/", "scripts/generate.py", "pyproject.toml"} <= sources
    assert any(str(DESCRIPTOR_IN_IMAGE) in arguments for arguments in of("COPY"))


def test_every_base_image_is_pinned_by_tag_and_digest() -> None:
    defaults = dict(a.split("=", 1) for a in of("ARG") if "=" in a)
    stages = of("FROM")
    assert len(stages) >= 2, "a multi-stage build: builder and runtime"
    earlier: set[str] = set()
    for stage in stages:
        image, *alias = stage.split()
        earlier.update(alias[1:])
        if image in earlier:
            continue  # built on an earlier stage (the storefront on the builder)
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], image)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image


def test_the_runtime_stage_runs_as_the_numeric_user_of_the_manifests(overlay: Rendered) -> None:
    users = of("USER")
    assert users == [f"{RUN_AS}:{RUN_AS}"]
    last_from = max(i for i, x in enumerate(INSTRUCTIONS) if x.keyword == "FROM")
    assert max(i for i, x in enumerate(INSTRUCTIONS) if x.keyword == "USER") > last_from
    for workload in overlay.workloads():
        assert pod_spec(workload)["securityContext"]["runAsUser"] == RUN_AS


def entrypoint() -> list[str]:
    [raw] = of("ENTRYPOINT")
    words: list[str] = json.loads(raw)
    return words


def test_each_deployment_runs_its_service_module_through_the_entrypoint(
    overlay: Rendered,
) -> None:
    assert entrypoint() == ["python", "-m"]
    assert not of("CMD"), "no default service: each Deployment names its own"
    for workload in overlay.workloads():
        name = workload["metadata"]["name"]
        for container in all_containers(workload):
            if not container["image"].split(":")[0].endswith(APP_IMAGE):
                continue
            if "command" in container:
                # Only the gateway's init containers replace the entrypoint, to copy files
                # the Dockerfile puts in the image: the descriptor set, the storefront.
                assert name == GATEWAY
                assert container["command"] == ["cp"]
                assert container["args"][0] in (
                    str(DESCRIPTOR_IN_IMAGE),
                    str(KubernetesLayout(TOPOLOGY).storefront_in_image / "index.html"),
                )
                continue
            module, *arguments = container["args"]
            if name == GATEWAY:
                # The gateway's reflection service reads the descriptor set in its own image.
                assert module == "shopmesh.reflection"
                assert arguments[1] == str(DESCRIPTOR_IN_IMAGE)
            else:
                assert (module, arguments) == (f"services.{name}", [])
            assert (ROOT / module.replace(".", "/") / "__main__.py").is_file(), module
    services = {p.parent.name for p in (ROOT / "services").glob("*/__main__.py")}
    assert services == set(TOPOLOGY.services)


def test_the_python_of_the_image_is_the_one_the_project_supports() -> None:
    [default] = [a for a in of("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.match(r"PYTHON_IMAGE=python:3\.11\.\d+-slim", default), default
    assert Path(ROOT / "pyproject.toml").read_text().count('requires-python = ">=3.11"') == 1


def builder_installs() -> set[str]:
    """The distributions the builder stage installs for code generation."""
    for arguments in of("RUN"):
        words = shlex.split(arguments.replace("&&", " && "))
        if "/opt/build/bin/pip" in words:
            start = words.index("/opt/build/bin/pip")
            command = words[start + 1 : words.index("&&", start) if "&&" in words[start:] else None]
            return {
                w.lower()
                for w in command
                if not w.startswith("-") and w not in ("install", "requirements/run.txt")
            }
    raise AssertionError("no `/opt/build/bin/pip install` in the Dockerfile")


def owner(module: str) -> str | None:
    """The installed distribution a module comes from (None: the standard library)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    assert spec.origin, module
    origin = Path(spec.origin).resolve()
    if not str(origin).startswith(site.getsitepackages()[0]):
        return None
    for distribution in importlib.metadata.distributions():
        for file in distribution.files or ():
            if Path(str(distribution.locate_file(file))).resolve() == origin:
                return str(distribution.metadata["Name"]).lower()
    raise AssertionError(f"no distribution owns {origin}")


def with_dependencies(names: set[str]) -> set[str]:
    found: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        for requirement in importlib.metadata.requires(name) or ():
            if "extra ==" not in requirement:
                pending.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower())
    return {n.replace("_", "-") for n in found}


def test_the_builder_installs_what_the_code_generator_imports() -> None:
    tree = ast.parse((ROOT / "scripts" / "generate.py").read_text())
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    needed = {owner(m) for m in modules if m != "__future__"} - {None}
    installed = with_dependencies(builder_installs())
    assert needed <= installed, f"the builder stage lacks {needed - installed}"


# --- the wheel's dependencies: all the runtime stage installs -------------------------------

FIRST_PARTY = "shopmesh"
"""The project's own distribution (services, shopmesh and the generated shop package)."""


def declared_dependencies() -> dict[str, Requirement]:
    """pyproject.toml's [project] dependencies by canonical name: what `pip install` of the
    wheel installs, and so all that the image's runtime stage has."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = (Requirement(text) for text in project["dependencies"])
    return {canonicalize_name(r.name): r for r in requirements}


def pins() -> dict[str, str]:
    """requirements/run.txt's `name==version` pins by canonical name."""
    pinned: dict[str, str] = {}
    for line in (ROOT / "requirements" / "run.txt").read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version
    return pinned


def imported_modules(*packages: str) -> dict[str, str]:
    """Every absolute import in the packages' sources: module name -> the first file importing
    it. `from a.b import c` counts as a.b.c (c may be a module of a namespace package)."""
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(), where)):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for name in names:
                    found.setdefault(name, where)
    return found


@cache
def top_level_distributions() -> dict[str, list[str]]:
    """importlib.metadata.packages_distributions(), read once (it reads every distribution)."""
    return dict(importlib.metadata.packages_distributions())


@cache
def distribution_files(distribution: str) -> frozenset[str]:
    return frozenset(str(f) for f in importlib.metadata.files(distribution) or ())


def providers(module: str) -> set[str]:
    """The installed distributions (canonical names) that provide `module` or, failing that,
    its closest parent: one for most top-level names; for a namespace package such as
    `opentelemetry` or `google`, the ones whose files hold that part of it."""
    top = module.partition(".")[0]
    candidates = top_level_distributions().get(top, [])
    if len(candidates) <= 1:
        return {canonicalize_name(c) for c in candidates}
    parts = module.split(".")
    while parts:
        path = "/".join(parts)
        found: set[str] = {
            canonicalize_name(c)
            for c in candidates
            if any(f == f"{path}.py" or f.startswith(f"{path}/") for f in distribution_files(c))
        }
        if found:
            return found
        parts.pop()
    return {canonicalize_name(c) for c in candidates}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = set(declared_dependencies())
    missing = []
    for module, where in imported_modules("services", "shopmesh").items():
        if module.partition(".")[0] in sys.stdlib_module_names:
            continue
        found = providers(module)
        assert found, f"{where}: no installed distribution provides {module}"
        if FIRST_PARTY not in found and not found & declared:
            missing.append(f"{where}: {module} (from {', '.join(sorted(found))})")
    assert not missing, f"not in pyproject.toml's dependencies: {missing}"


def test_pyproject_ranges_admit_the_pins_of_requirements_run() -> None:
    pinned = pins()
    for name, requirement in declared_dependencies().items():
        assert name in pinned, f"{name}: in pyproject.toml, not pinned in requirements/run.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{requirement} does not admit the pin {name}=={pinned[name]}"
        )


def test_every_data_file_of_the_packages_is_package_data() -> None:
    """What the wheel (and so the image) carries beside the modules: the seed catalog, the
    dashboard's page, the edge's Lua filter."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = [
        (Path(*package.split(".")), pattern)
        for package, patterns in setuptools["package-data"].items()
        for pattern in patterns
    ]
    for top in ("services", "shopmesh"):
        for path in (ROOT / top).rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc"):
                continue
            relative = path.relative_to(ROOT)
            assert any(
                relative.is_relative_to(package)
                and fnmatch.fnmatch(str(relative.relative_to(package)), pattern)
                for package, pattern in shipped
            ), f"{relative}: no [tool.setuptools.package-data] pattern ships it"
