"""`python -m scripts.fuzz`: fuzz a mesh's gateway (a running one, or one started for the
run), print the outcomes and the checks, exit 1 on a violation."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from rich.console import Console

import scripts.fuzz
from scripts.fuzz.cases import FAMILIES
from scripts.fuzz.report import render, violations
from scripts.fuzz.run import Result, Settings, fuzz
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, up

ROOT = Path(__file__).resolve().parents[2]
LOG_MAX_BYTES = 512 * 1024 * 1024
"""No log may be capped during the run: the checks read every line written."""


@contextlib.asynccontextmanager
async def target_mesh(state_dir: Path | None, keep: bool) -> AsyncIterator[RunningMesh]:
    """The mesh running in `state_dir`, or a new one in a temporary directory, always
    stopped afterwards."""
    if state_dir is not None:
        mesh = RunningMesh.attach(state_dir)
        if mesh is None:
            raise MeshError(f"no mesh runs in {state_dir} (start one: make up)")
        yield mesh
        return
    # Short: Unix socket paths must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="smfuzz-", dir="/tmp"))
    print("starting the mesh (shopmesh.local) ...", flush=True)
    options = MeshOptions(
        state_dir=root,
        topology=ROOT / "envoy" / "mesh.yaml",
        descriptor=ROOT / "gen" / "shop.pb",
        dashboard=False,
        log_max_bytes=LOG_MAX_BYTES,
    )
    try:
        mesh = await up(options)
        try:
            yield mesh
        finally:
            await mesh.stop()
    finally:
        if keep:
            print(f"mesh state (logs, access logs) kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _main(args: argparse.Namespace, settings: Settings) -> Result:
    async with target_mesh(args.state_dir, args.keep) as mesh:
        print(
            f"fuzzing {mesh.gateway_address}: {settings.count} requests, seed {settings.seed}",
            flush=True,
        )

        def progress(done: int, total: int) -> None:
            if done % 1000 == 0 or done == total:
                print(f"  {done}/{total}", flush=True)

        return await fuzz(mesh, settings, progress)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fuzz", description=(scripts.fuzz.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--count", type=int, default=10_000, help="requests to send")
    parser.add_argument("--seed", type=int, help="replay a run (default: a new random seed)")
    parser.add_argument(
        "--rate", type=float, help="requests per second (default: 90%% of the rate limit)"
    )
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated, of: {', '.join(FAMILIES)}",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="fuzz the mesh running there instead of a new one"
    )
    parser.add_argument("--keep", action="store_true", help="keep the new mesh's state dir")
    args = parser.parse_args()
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {seed}", flush=True)
    settings = Settings(count=args.count, seed=seed, rate=args.rate, families=families)
    try:
        result = asyncio.run(_main(args, settings))
    except MeshError as error:
        sys.exit(f"fuzz failed: {error}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted (seed {seed})")
    render(result, Console(width=None if sys.stdout.isatty() else 140, highlight=False))
    sys.exit(1 if violations(result) else 0)


if __name__ == "__main__":
    main()
