"""What a process wrote to its log during the run, and why: the lines appended since a mark
(also when the log keeper capped the file meanwhile, from its `.1` copy), grouped by reason,
against the bound of finding 3: at most one line per second per reason plus a count of those
suppressed, which is LINES_PER_SECOND per reason over the run, plus a small burst."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

LINES_PER_SECOND = 2.0
"""One line per second per reason, and one "N suppressed" line per second with it."""
BURST = 5
"""Lines per reason allowed on top: a limiter's first line, lines that cross a second."""
_VARYING = re.compile(r"\[[^\]]*\]|'[^']*'|\"[^\"]*\"|0x[0-9a-f]+|[0-9a-f]{8,}|\d+")
"""What differs between lines of one reason: anything bracketed or quoted (a method, a value),
numbers, addresses and ids."""


@dataclass(frozen=True)
class LogMark:
    """Where a log ended when the run began."""

    path: Path
    offset: int

    @classmethod
    def of(cls, path: Path) -> LogMark:
        try:
            return cls(path, path.stat().st_size)
        except FileNotFoundError:
            return cls(path, 0)

    def new_lines(self) -> list[str]:
        """The lines written since the mark. A file now shorter than the mark was capped
        (copied to `<log>.1`, then emptied): its lines are the copy's from the mark on, then
        the file's. (A file capped twice during the run has lost lines in between.)"""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size >= self.offset:
            return _read_from(self.path, self.offset)
        return _read_from(self.path.with_name(self.path.name + ".1"), self.offset) + _read_from(
            self.path, 0
        )


def _read_from(path: Path, offset: int) -> list[str]:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _shape(text: str) -> str:
    return _VARYING.sub("#", text.strip())[:100]


def reason(line: str) -> str:
    """Why a line was written: an app's JSON line by its logger and message (and its `reason`
    or `grpc_status` field, if any); any other line (Envoy's, a raw traceback) by its text.
    Both without what varies between lines of one reason (_VARYING), and cut short."""
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            why = f"{entry.get('logger', '?')}: {_shape(str(entry.get('message', '?')))}"
            detail = entry.get("reason") or entry.get("grpc_status")
            return f"{why} ({detail})" if detail else why
    return _shape(line)


def is_ours(line: str) -> bool:
    """The supervisor's own `--- shopmesh: starting` line, not the process's."""
    return line.startswith("--- shopmesh:")


@dataclass(frozen=True)
class Flood:
    """A reason logged more often than the bound allows."""

    log: str
    reason: str
    lines: int
    allowed: int
    example: str


def allowed_lines(seconds: float) -> int:
    return int(BURST + LINES_PER_SECOND * seconds)


def floods(marks: list[LogMark], seconds: float) -> tuple[dict[str, int], list[Flood]]:
    """Lines each log got since its mark, and every reason over the bound for `seconds`."""
    counts: dict[str, int] = {}
    found: list[Flood] = []
    limit = allowed_lines(seconds)
    for mark in marks:
        lines = [line for line in mark.new_lines() if line.strip() and not is_ours(line)]
        counts[mark.path.name] = len(lines)
        by_reason = Counter(reason(line) for line in lines)
        for why, number in by_reason.most_common():
            if number <= limit:
                break
            example = next(line for line in lines if reason(line) == why)
            found.append(Flood(mark.path.name, why, number, limit, example[:300]))
    return counts, found
