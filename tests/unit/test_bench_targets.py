"""make bench's verdict on a figure measured in several rounds: a verdict only where the
rounds agree."""

from __future__ import annotations

from scripts.bench.targets import agreed


def test_rounds_all_within_the_bound_meet_it() -> None:
    assert agreed([0.2, 0.5, 0.6], 0.6) is True


def test_rounds_all_beyond_the_bound_do_not() -> None:
    assert agreed([2.51, 2.94, 4.83], 0.6) is False


def test_rounds_on_both_sides_give_no_verdict() -> None:
    # The run of 2026-12-02 16:00: a median of -7.15 ms "added" p99 from rounds of -16.25 to
    # +3.84 ms, i.e. the direct path's own spread, not a met target.
    assert agreed([-16.25, -7.15, 3.84], 1.5) is None
