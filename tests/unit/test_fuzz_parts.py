"""The fuzzer's own parts (scripts.fuzz) that decide a verdict: reading what a log got during
a run (also across the log keeper's cap), grouping lines by reason, the seeded cases, and what
counts as UNKNOWN to a gRPC caller."""

from __future__ import annotations

import json
import random
from pathlib import Path

from scripts.fuzz.bodies import FRAMINGS
from scripts.fuzz.cases import FAMILIES, Case, draw_cases
from scripts.fuzz.catalog import catalog
from scripts.fuzz.logs import LogMark, allowed_lines, floods, reason
from scripts.fuzz.reply import End, Reply
from scripts.fuzz.report import unknown_to_caller
from shopmesh.local.logcap import cap
from shopmesh.topology import load_topology
from tests.support.paths import DESCRIPTOR_SET, MESH_FILE


def app_line(message: str, method: str) -> str:
    return json.dumps({"logger": "grpc", "message": message.format(method), "level": "ERROR"})


def test_a_mark_reads_only_what_was_written_after_it(tmp_path: Path) -> None:
    log = tmp_path / "users-0.app.log"
    log.write_text("before\n")
    mark = LogMark.of(log)
    with log.open("a") as file:
        file.write("after 1\nafter 2\n")
    assert mark.new_lines() == ["after 1", "after 2"]


def test_a_mark_reads_across_the_log_keepers_cap(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text("old line that is long enough\n")
    mark = LogMark.of(log)
    with log.open("a") as file:
        file.write("during 1\n")
    assert cap(log, max_bytes=1)
    with log.open("a") as file:
        file.write("during 2\n")
    assert mark.new_lines() == ["during 1", "during 2"]


def test_lines_of_one_reason_about_different_methods_are_one_reason() -> None:
    text = "Unexpected [DecodeError] raised by servicer method [{}]"
    first = reason(app_line(text, "/shop.users.v1.UsersService/GetUser"))
    second = reason(app_line(text, "/shop.orders.v1.OrdersService/GetOrder"))
    other = reason(app_line("serving {}", "x"))
    envoy = "[2026-12-02 02:30:31.529][{}][warning][main] [source/server.cc:1059] no limit"
    assert first == second != other
    assert reason(envoy.format(16599)) == reason(envoy.format(17)) != first


def test_a_reason_logged_past_the_bound_is_a_flood(tmp_path: Path) -> None:
    log = tmp_path / "orders-0.app.log"
    log.touch()
    mark = LogMark.of(log)
    seconds = 10.0
    limit = allowed_lines(seconds)
    lines = [app_line("undecodable [{}]", str(i)) for i in range(limit + 1)]
    lines += [app_line("rare {}", "x")] * limit
    log.write_text("\n".join(lines) + "\n")

    counts, found = floods([mark], seconds)

    assert counts == {log.name: 2 * limit + 1}
    assert [(f.reason, f.lines) for f in found] == [("grpc: undecodable #", limit + 1)]


def test_bad_framings_break_the_grpc_length_prefix() -> None:
    rng = random.Random(1)
    message = b"\x0a\x03abc"
    assert FRAMINGS["well-framed"](rng, message) == (b"\0\0\0\0\x05" + message,)
    assert FRAMINGS["3-byte header"](rng, message) == (b"\0\0\0",)
    assert FRAMINGS["no body"](rng, message) == ()
    assert FRAMINGS["two messages"](rng, message) == ((b"\0\0\0\0\x05" + message) * 2,)


SIGNED_IN = (("authorization", "Bearer fuzz-shopper"),)


def draw(seed: int, count: int) -> list[Case]:
    targets = catalog(load_topology(MESH_FILE), DESCRIPTOR_SET)
    return draw_cases(random.Random(seed), targets, "127.0.0.1:1", count, list(FAMILIES), SIGNED_IN)


def test_most_cases_carry_the_shoppers_token_and_some_none_or_a_forged_one() -> None:
    # Without the token the gateway refuses protected methods before reading their bodies.
    callers = [dict(case.request.headers).get("authorization") for case in draw(7, 1000)]
    signed_in = callers.count(SIGNED_IN[0][1])
    assert 850 <= signed_in <= 950, signed_in
    assert callers.count(None) > 20
    assert sum(1 for c in callers if c not in (None, SIGNED_IN[0][1])) > 20


def test_a_seed_draws_the_same_cases_and_every_family() -> None:
    first = draw(7, 300)
    assert [case.describe() for case in first] == [case.describe() for case in draw(7, 300)]
    assert {case.family for case in first} == set(FAMILIES)
    assert [case.describe() for case in draw(8, 300)] != [case.describe() for case in first]


def test_a_grpc_caller_reads_a_bare_5xx_or_unmapped_status_as_unknown() -> None:
    case = next(case for case in draw(7, 50) if case.grpc)
    bare_503 = Reply(End.ANSWERED, 0.1, http_status=503)
    bare_404 = Reply(End.ANSWERED, 0.1, http_status=404)
    bare_431 = Reply(End.ANSWERED, 0.1, http_status=431)
    with_status = Reply(End.ANSWERED, 0.1, http_status=200, grpc_status=3)
    unknown = Reply(End.ANSWERED, 0.1, http_status=200, grpc_status=2)
    assert unknown_to_caller(case, bare_503)
    assert unknown_to_caller(case, bare_431)
    assert unknown_to_caller(case, unknown)
    assert not unknown_to_caller(case, bare_404)
    assert not unknown_to_caller(case, with_status)
