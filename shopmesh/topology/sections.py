"""One mapping of a topology document, read key by key: typed getters whose errors name the key
by its path in the file, and `done`, which refuses the keys nobody read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import NoReturn, TypeVar

from shopmesh.topology.model import TopologyError

_DURATION = re.compile(r"^(?P<value>\d+(\.\d+)?)(?P<unit>ms|s|m)$")
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000}

T = TypeVar("T")


def fail(source: str, path: str, message: str) -> NoReturn:
    raise TopologyError(f"{source}: {path}: {message}")


class Section:
    """One mapping of the document, read key by key; `done` refuses keys nobody read."""

    def __init__(self, data: Mapping[str, object], source: str, path: str) -> None:
        self.data = data
        self.source = source
        self.path = path
        self.read: set[str] = set()
        self.children: dict[str, Section] = {}

    @classmethod
    def of(cls, raw: object, source: str, path: str) -> Section:
        if not isinstance(raw, dict):
            fail(source, path or "(top level)", "expected a mapping")
        for key in raw:
            if not isinstance(key, str):
                fail(source, path or "(top level)", f"key {key!r} is not a string")
        return cls(raw, source, path)

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> NoReturn:
        fail(self.source, self._where(key), message)

    def entries(self) -> list[str]:
        """Every key of this mapping (all count as read: the caller handles each)."""
        self.read.update(self.data)
        return list(self.data)

    def _get(self, key: str) -> object:
        if key not in self.data:
            self.fail(key, "missing (every key is required)")
        self.read.add(key)
        return self.data[key]

    def _typed(self, key: str, kind: type[T], expected: str) -> T:
        value = self._get(key)
        # bool is an int in Python; a YAML `true` is never a number here.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(key, f"expected {expected}, got {value!r}")
        return value

    def mapping(self, key: str) -> Mapping[str, object]:
        return Section.of(self._get(key), self.source, self._where(key)).data

    def section(self, key: str) -> Section:
        """The mapping at `key`; asking twice gives the same section (and its read keys)."""
        if key not in self.children:
            self.children[key] = Section.of(self._get(key), self.source, self._where(key))
        return self.children[key]

    def text(self, key: str, pattern: re.Pattern[str], expected: str) -> str:
        value = self._typed(key, str, expected)
        if not pattern.fullmatch(value):
            self.fail(key, f"expected {expected}, got {value!r}")
        return value

    def text_list(self, key: str, pattern: re.Pattern[str], expected: str) -> tuple[str, ...]:
        values = self._typed(key, list, f"a list of {expected}")
        for value in values:
            if not isinstance(value, str) or not pattern.fullmatch(value):
                self.fail(key, f"expected {expected}, got {value!r}")
        if len(set(values)) != len(values):
            self.fail(key, "lists an entry twice")
        return tuple(values)

    def boolean(self, key: str) -> bool:
        return self._typed(key, bool, "true or false")

    def integer(self, key: str, minimum: int, maximum: int | None = None) -> int:
        value = self._typed(key, int, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(key, f"must be {bound}, got {value}")
        return value

    def optional_integer(self, key: str, default: int, minimum: int) -> int:
        """`integer(key)` if the key is there, else `default`."""
        return self.integer(key, minimum) if key in self.data else default

    def number(self, key: str, minimum: float, maximum: float) -> float:
        value = self._get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(key, f"expected a number, got {value!r}")
        if not minimum <= value <= maximum:
            self.fail(key, f"must be between {minimum:g} and {maximum:g}, got {value}")
        return float(value)

    def duration(self, key: str, minimum: timedelta = timedelta(0)) -> timedelta:
        value = self._get(key)
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            self.fail(key, f"expected a duration such as 250ms, 1s or 1.5s, got {value!r}")
        millis = float(match["value"]) * _DURATION_UNITS[match["unit"]]
        if millis != int(millis):
            self.fail(key, f"{value!r} is finer than a millisecond")
        result = timedelta(milliseconds=int(millis))
        if result < minimum:
            self.fail(key, f"must be at least {minimum.total_seconds() * 1000:g}ms")
        return result

    def done(self) -> None:
        """Refuse keys that were never read: they are typos or unsupported settings."""
        for key in self.data:
            if key not in self.read:
                self.fail(key, "unknown key")
