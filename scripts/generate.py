"""Generate the `shop` Python package from proto/ (messages, gRPC stubs, typed .pyi).

Runs the protoc bundled in grpcio-tools (pinned in requirements/run.txt) so the output is the
same on every machine, plus mypy-protobuf's plugins for the type stubs. It also writes a binary
descriptor set of every contract, which tools such as Envoy's gRPC-JSON transcoder read; the set
also holds google.rpc.Status and the error detail messages (from googleapis-common-protos), so
the transcoder can turn a failed call's status and details into a JSON body.

Usage: python scripts/generate.py [--out gen]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import google.rpc.status_pb2
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
# In the descriptor set only: error details for the gateway's JSON transcoder.
RPC_PROTOS = ("status.proto", "error_details.proto")


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed in this interpreter's environment."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            sys.exit(f"generate: {name} not found; run `make venv` (it installs mypy-protobuf)")
        return found
    return str(path)


def _protoc(well_known: Path, *arguments: str) -> None:
    """Run grpcio-tools' protoc on proto/ (and the well-known types) with `arguments`."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={well_known}",
        *arguments,
    ]
    subprocess.run(command, check=True, cwd=ROOT)


def generate(out: Path) -> list[Path]:
    """Regenerate `out` from every .proto under proto/; returns the generated .py files."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        sys.exit(f"generate: no .proto files under {PROTO_DIR}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    _protoc(
        well_known,
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    )
    write_descriptor_set(out / "shop.pb", protos, well_known)
    # protoc writes plain directories; make each one a regular package so imports, mypy and
    # setuptools treat `shop` like any other package.
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        if directory != out:
            (directory / "__init__.py").touch()
    return sorted(out.rglob("*_pb2*.py"))


def write_descriptor_set(path: Path, protos: list[str], well_known: Path) -> None:
    """Write a descriptor set of `protos`, their imports, and google/rpc/status.proto and
    error_details.proto. Those two ship as .proto files inside googleapis-common-protos, whose
    Python modules the services already use; they are copied into a directory of their own so
    that nothing else in site-packages can shadow the well-known types on the import path."""
    with tempfile.TemporaryDirectory() as include:
        copy_rpc_protos(Path(include))
        _protoc(
            well_known,
            f"--proto_path={include}",
            f"--descriptor_set_out={path}",
            "--include_imports",
            "--include_source_info",
            *protos,
            *(f"google/rpc/{name}" for name in RPC_PROTOS),
        )


def copy_rpc_protos(include: Path) -> list[Path]:
    """Copy google/rpc/status.proto and error_details.proto from googleapis-common-protos into
    `include`/google/rpc (an import root of their own); returns the copies."""
    installed = Path(google.rpc.status_pb2.__file__).parent
    rpc = include / "google" / "rpc"
    rpc.mkdir(parents=True, exist_ok=True)
    for name in RPC_PROTOS:
        shutil.copyfile(installed / name, rpc / name)
    return [rpc / name for name in RPC_PROTOS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gen")
    args = parser.parse_args()
    files = generate(args.out)
    print(f"generated {len(files)} modules into {args.out}")


if __name__ == "__main__":
    main()
