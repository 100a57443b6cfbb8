"""`make breaking` really catches breaking changes, and lets additive ones through.

Each test builds a throwaway git repository from the project's buf.yaml and Makefile, the shared
Money contract and a small service contract of its own (so it never depends on the service
protos being written concurrently), commits it as the baseline on `main`, edits the working tree
and runs the real `make breaking` target against that baseline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
MONEY = Path("proto/shop/common/v1/money.proto")
SAMPLE = Path("proto/shop/sample/v1/sample.proto")

SAMPLE_PROTO = """\
syntax = "proto3";

// A contract that exists only inside this test's temporary repository.
package shop.sample.v1;

import "shop/common/v1/money.proto";

// Looks up items.
service SampleService {
  // Returns one item. Errors: NOT_FOUND when no item has the id.
  rpc GetItem(GetItemRequest) returns (GetItemResponse);
}

// The item to look up.
message GetItemRequest {
  // Id of the item.
  string item_id = 1;
}

// The item.
message GetItemResponse {
  // Id of the item.
  string item_id = 1;
  // Display name.
  string name = 2;
  // Unit price.
  shop.common.v1.Money price = 3;
}
"""

ADDED_RPC = """\
  // Returns one item. Errors: NOT_FOUND when no item has the id.
  rpc GetItem(GetItemRequest) returns (GetItemResponse);
  // Lists items.
  rpc ListItems(ListItemsRequest) returns (ListItemsResponse);
}

// Which items to list.
message ListItemsRequest {
  // Maximum number of items to return.
  int32 page_size = 1;
}

// A page of items.
message ListItemsResponse {
  // The items.
  repeated GetItemResponse items = 1;
}
"""


@dataclass(frozen=True)
class Edit:
    """Replace `old` with `new` in the file at `path` (relative to the repository)."""

    path: Path
    old: str
    new: str

    def apply(self, repo: Path) -> None:
        """Edit the working tree; fails loudly if `old` is not there, so no case passes by
        accident after the baseline protos change."""
        file = repo / self.path
        text = file.read_text()
        assert self.old in text, f"{self.path} no longer contains {self.old!r}; update the test"
        file.write_text(text.replace(self.old, self.new, 1))


# Inherited from an outer `make test` or the shell, these would change what the inner
# `make breaking` runs (BREAKING_AGAINST is a `?=` default, so the environment wins).
_OUTER_MAKE = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "BREAKING_AGAINST"}


def _environment() -> Mapping[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in _OUTER_MAKE}
    # Ignore the developer's git configuration (signing, hooks, templates): buf runs git too.
    return {**environment, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=shopmesh tests",
            "-c",
            "user.email=tests@shop.example",
            *args,
        ],
        cwd=repo,
        env=_environment(),
        check=True,
        capture_output=True,
        timeout=30,
    )


def _make_breaking(
    repo: Path, buf: Path, against: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the project's `make breaking` in `repo`, using the venv's pinned buf."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make not found on PATH; install it (e.g. apt-get install make)")
    command = [
        make,
        "--no-print-directory",
        # The temporary repository has no venv of its own: never try to build one.
        "--old-file=.venv/.installed-dev",
        "breaking",
        f"BIN={buf.parent}",
    ]
    if against is not None:
        command.append(f"BREAKING_AGAINST={against}")
    return subprocess.run(
        command, cwd=repo, env=_environment(), capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose `main` branch holds the baseline contracts."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("buf.yaml", "Makefile"):
        shutil.copy2(ROOT / name, repo / name)
    (repo / MONEY).parent.mkdir(parents=True)
    shutil.copy2(ROOT / MONEY, repo / MONEY)
    (repo / SAMPLE).parent.mkdir(parents=True)
    (repo / SAMPLE).write_text(SAMPLE_PROTO)
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "--no-gpg-sign", "--message=baseline")
    return repo


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(
            Edit(SAMPLE, "  // Display name.\n  string name = 2;\n", ""),
            ['field "2" with name "name"', "was deleted"],
            id="removed-field",
        ),
        pytest.param(
            Edit(SAMPLE, "rpc GetItem(", "rpc FetchItem("),
            ['RPC "GetItem"', "was deleted"],
            id="renamed-rpc",
        ),
        pytest.param(
            Edit(MONEY, "int64 minor_units = 2;", "string minor_units = 2;"),
            ['"minor_units"', 'changed type from "int64" to "string"'],
            id="changed-field-type",
        ),
    ],
)
def test_make_breaking_fails_on_a_breaking_change(
    repo: Path, buf: Path, edit: Edit, expected: list[str]
) -> None:
    edit.apply(repo)

    result = _make_breaking(repo, buf)

    output = result.stdout + result.stderr
    assert result.returncode != 0, f"make breaking accepted a breaking change:\n{output}"
    for fragment in expected:
        assert fragment in output


@pytest.mark.parametrize(
    "edits",
    [
        pytest.param([], id="unchanged"),
        pytest.param(
            [
                Edit(
                    SAMPLE,
                    "  shop.common.v1.Money price = 3;\n",
                    "  shop.common.v1.Money price = 3;\n"
                    "  // Longer description; unset for items that have none.\n"
                    "  optional string description = 4;\n",
                ),
                Edit(
                    SAMPLE,
                    "  // Returns one item. Errors: NOT_FOUND when no item has the id.\n"
                    "  rpc GetItem(GetItemRequest) returns (GetItemResponse);\n}\n",
                    ADDED_RPC,
                ),
            ],
            id="new-optional-field-and-new-rpc",
        ),
    ],
)
def test_make_breaking_passes_without_a_breaking_change(
    repo: Path, buf: Path, edits: list[Edit]
) -> None:
    for edit in edits:
        edit.apply(repo)

    result = _make_breaking(repo, buf)

    assert result.returncode == 0, result.stdout + result.stderr
    # Success says what was compared and the verdict, instead of printing nothing.
    assert "proto/ against .git#branch=main: no breaking change" in result.stdout


def test_make_breaking_against_the_remote_base_branch_of_a_ci_checkout(
    repo: Path, buf: Path, tmp_path: Path
) -> None:
    # What CI sees: a clone checked out at a detached commit with no local `main`, only
    # `origin/main`. The workflow passes this BREAKING_AGAINST.
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "--quiet", str(repo), str(clone))
    _git(clone, "checkout", "--quiet", "--detach")
    _git(clone, "branch", "--quiet", "--delete", "main")
    Edit(SAMPLE, "rpc GetItem(", "rpc FetchItem(").apply(clone)

    result = _make_breaking(clone, buf, against=".git#branch=origin/main")

    assert result.returncode != 0
    assert 'RPC "GetItem"' in result.stdout + result.stderr
