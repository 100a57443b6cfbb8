"""A test run ended by SIGTERM (a CI timeout, `kill`) still runs every fixture's teardown, so the
meshes and the Postgres it started do not outlive it (tests/conftest.py turns SIGTERM into the
KeyboardInterrupt Ctrl-C raises). Before, Python died at once and 15 processes of a mesh stayed."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.polling import eventually_sync

BLOCKED_TEST = """
import time
from pathlib import Path

import pytest


@pytest.fixture
def resource():
    Path({started!r}).touch()
    try:
        yield
    finally:
        Path({torn_down!r}).touch()


def test_waits_to_be_stopped(resource):
    time.sleep(60)
"""


def test_sigterm_ends_a_run_with_every_fixtures_teardown(tmp_path: Path) -> None:
    started, torn_down = tmp_path / "started", tmp_path / "torn-down"
    test_file = tmp_path / "test_blocked.py"
    test_file.write_text(BLOCKED_TEST.format(started=str(started), torn_down=str(torn_down)))
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", str(test_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        eventually_sync(started.exists, 30.0, "the blocked test to start")
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=30.0)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert torn_down.exists(), output
    assert run.returncode == pytest.ExitCode.INTERRUPTED, output
