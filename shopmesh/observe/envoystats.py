"""One Envoy's stats at one moment, parsed from its admin's `/stats?format=json&
histogram_buckets=cumulative`, and what changed between two such moments: how much a counter
grew, and the histogram of the samples recorded in between.

Envoy's histograms are cumulative since it started, per upper bound ("how many samples were
at most 25 ms"), so the samples of a window are the difference of two readings, bucket by
bucket, and its quantiles are interpolated within the bucket they fall in, as Prometheus's
`histogram_quantile` does. Everything here is pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UPTIME = "server.uptime"
"""Seconds since the Envoy started: when it goes down, the Envoy was restarted in between."""


@dataclass(frozen=True)
class Histogram:
    """Samples counted at or below each upper bound (milliseconds), cumulative: `cumulative[i]`
    samples were at most `bounds[i]`. Samples above the last bound are not counted."""

    bounds: tuple[float, ...] = ()
    cumulative: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.cumulative):
            raise ValueError("a histogram needs one cumulative count per bound")

    @property
    def count(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def since(self, earlier: Histogram) -> Histogram:
        """The samples recorded after `earlier`, the same histogram read before. If a count went
        down (the Envoy restarted), every sample it has now is new."""
        if not earlier.cumulative:
            return self
        if earlier.bounds != self.bounds or any(
            now < then for now, then in zip(self.cumulative, earlier.cumulative, strict=True)
        ):
            return self
        return Histogram(
            self.bounds,
            tuple(
                now - then for now, then in zip(self.cumulative, earlier.cumulative, strict=True)
            ),
        )

    def __add__(self, other: Histogram) -> Histogram:
        """The samples of both (histograms with the same bounds: replicas, methods)."""
        if not other.cumulative:
            return self
        if not self.cumulative:
            return other
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different buckets")
        return Histogram(
            self.bounds,
            tuple(a + b for a, b in zip(self.cumulative, other.cumulative, strict=True)),
        )

    def quantile(self, q: float) -> float | None:
        """The value below which a share `q` (0 < q <= 1) of the samples lie, interpolated
        linearly within its bucket (the first bucket starts at 0), so it is exact to within
        that bucket; None without samples."""
        if not 0 < q <= 1:
            raise ValueError(f"a quantile is between 0 and 1, got {q}")
        total = self.count
        if total == 0:
            return None
        rank = q * total
        lower, below = 0.0, 0
        for bound, count in zip(self.bounds, self.cumulative, strict=True):
            if count >= rank and count > below:
                return lower + (bound - lower) * (rank - below) / (count - below)
            lower, below = bound, count
        return self.bounds[-1]  # not reached: the last bucket holds the last sample


def total(histograms: Iterable[Histogram]) -> Histogram:
    """The samples of all of `histograms`."""
    merged = Histogram()
    for histogram in histograms:
        merged = merged + histogram
    return merged


@dataclass(frozen=True)
class EnvoyStats:
    """The counters, gauges and histograms of one Envoy, read at one moment."""

    values: Mapping[str, int]
    """Counters and gauges by name (Envoy's JSON does not tell them apart)."""
    histograms: Mapping[str, Histogram]

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> EnvoyStats:
        """From Envoy's JSON /stats with cumulative histogram buckets: `{"stats": [{"name",
        "value"}, ..., {"histograms": [{"name", "buckets": [{"upper_bound", "cumulative"}]}]}]}`.
        Text readouts (string values) are left out."""
        values: dict[str, int] = {}
        histograms: dict[str, Histogram] = {}
        for entry in document.get("stats", []):
            if "histograms" in entry:
                # Without histogram_buckets=cumulative Envoy sends quantiles instead: no buckets.
                listed = entry["histograms"] if isinstance(entry["histograms"], list) else []
                for histogram in listed:
                    buckets = histogram.get("buckets", [])
                    histograms[histogram["name"]] = Histogram(
                        tuple(float(b["upper_bound"]) for b in buckets),
                        tuple(int(b["cumulative"]) for b in buckets),
                    )
            elif isinstance(entry.get("value"), int):
                values[entry["name"]] = entry["value"]
        return cls(values, histograms)


@dataclass(frozen=True)
class EnvoyWindow:
    """One Envoy read twice: what happened in between."""

    before: EnvoyStats
    after: EnvoyStats

    @property
    def restarted(self) -> bool:
        """Whether the Envoy started again in between (its counters began again from 0)."""
        return self.after.values.get(UPTIME, 0) < self.before.values.get(UPTIME, 0)

    def counter(self, name: str) -> int:
        """How much the counter `name` grew (a counter that appeared grew from 0; after a
        restart, its whole value is new)."""
        now = self.after.values.get(name, 0)
        then = 0 if self.restarted else self.before.values.get(name, 0)
        return now - then if now >= then else now

    def gauge(self, name: str) -> int:
        """The gauge `name` at the end of the window."""
        return self.after.values.get(name, 0)

    def histogram(self, name: str) -> Histogram:
        """The samples of histogram `name` recorded in the window."""
        now = self.after.histograms.get(name, Histogram())
        if self.restarted:
            return now
        return now.since(self.before.histograms.get(name, Histogram()))
