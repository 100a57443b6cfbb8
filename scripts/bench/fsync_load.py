"""Another process saturating the disk with fsyncs (`make bench BENCH_ARGS=--disk`): write a
block, fsync, again, into one file, for a bounded time and within a bounded size (it wraps
around), then print how many fsyncs it made and remove the file.

Usage: python -m scripts.bench.fsync_load FILE SECONDS [--max-bytes N] [--block N]"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

BLOCK = 256 * 1024
"""Big enough that each fsync flushes real data, small enough for many fsyncs a second."""
MAX_BYTES = 256 * 1024 * 1024


def saturate(path: Path, seconds: float, max_bytes: int, block: int) -> dict[str, float]:
    """Write and fsync `block`-sized pieces into `path` for `seconds`; what it did."""
    data = os.urandom(block)  # incompressible, so no layer below can shrink the writes
    fsyncs = 0
    offset = 0
    started = time.monotonic()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while time.monotonic() - started < seconds:
            os.pwrite(descriptor, data, offset)
            os.fsync(descriptor)
            fsyncs += 1
            offset = (offset + block) % max_bytes
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    return {"fsyncs": fsyncs, "seconds": elapsed, "mib": fsyncs * block / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.fsync_load")
    parser.add_argument("file", type=Path)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    parser.add_argument("--block", type=int, default=BLOCK)
    args = parser.parse_args()
    print(json.dumps(saturate(args.file, args.seconds, args.max_bytes, args.block)), flush=True)


if __name__ == "__main__":
    main()
