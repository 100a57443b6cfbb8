"""The dashboard's guard, served for real and called over HTTP: every request needs this run's
token; Host must name this server (DNS rebinding); a request that changes something needs the
token in its header and this page's Origin, and a request from another origin is refused
whatever its method. Each refusal is 403 with a reason, and never reaches the mesh. Bad input
that gets through is 400 with a reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shopmesh.local.dashboard import TOKEN_HEADER
from tests.support.dashboard import TOKEN, TRACE_ID, ServedDashboard, served_dashboard

FAULT = {"abort_percent": 30, "grpc_status": "UNAVAILABLE"}


@pytest.fixture
async def dashboard() -> AsyncIterator[ServedDashboard]:
    async with served_dashboard() as served:
        yield served


@pytest.fixture
async def http(dashboard: ServedDashboard) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dashboard.base, trust_env=False, timeout=10) as client:
        yield client


def trusted(dashboard: ServedDashboard, **extra: str) -> dict[str, str]:
    """The headers the page sends with a request that changes something."""
    return {TOKEN_HEADER: TOKEN, "Origin": dashboard.origin, **extra}


def refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 403, response.text
    assert reason in response.json()["error"], response.json()


# --- the token -------------------------------------------------------------------------------


async def test_a_request_without_the_token_is_refused(http: httpx.AsyncClient) -> None:
    for path in ("/", "/api/state", "/static/dashboard.js", "/healthz"):
        refused(await http.get(path), "missing token")


async def test_a_wrong_token_is_refused(http: httpx.AsyncClient) -> None:
    refused(await http.get("/api/state", headers={TOKEN_HEADER: TOKEN + "x"}), "wrong token")
    refused(await http.get("/", params={"token": "guess"}), "wrong token")


async def test_the_printed_link_opens_the_page_with_the_token_in_its_files(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/", params={"token": TOKEN})

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f"/static/dashboard.js?token={TOKEN}" in page.text
    script = await http.get("/static/dashboard.js", params={"token": TOKEN})
    assert script.status_code == 200
    assert "X-Shopmesh-Token" in script.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"


async def test_a_change_needs_the_token_in_its_header_not_in_the_query(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/api/faults/payments",
        params={"token": TOKEN},
        json=FAULT,
        headers={"Origin": dashboard.origin},
    )

    refused(response, "missing token")
    assert dashboard.backend.changes == 0


# --- Host: DNS rebinding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1", "127.0.0.1:1", "0.0.0.0:{port}"]
)
async def test_another_host_is_refused_even_with_the_token(
    dashboard: ServedDashboard, http: httpx.AsyncClient, host: str
) -> None:
    headers = {TOKEN_HEADER: TOKEN, "Host": host.format(port=dashboard.port)}

    refused(await http.get("/api/state", headers=headers), "DNS rebinding")


async def test_localhost_is_this_server_too(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    headers = {TOKEN_HEADER: TOKEN, "Host": f"localhost:{dashboard.port}"}

    assert (await http.get("/healthz", headers=headers)).status_code == 200


async def test_a_rebound_page_cannot_change_anything(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    """What a page on evil.example re-pointed at 127.0.0.1 sends: its own Host and Origin."""
    origin = f"http://evil.example:{dashboard.port}"
    headers = trusted(dashboard, Host=f"evil.example:{dashboard.port}", Origin=origin)

    refused(await http.post("/api/faults/payments", json=FAULT, headers=headers), "Host")
    assert dashboard.backend.changes == 0


# --- Origin ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/faults/payments", FAULT),
        ("DELETE", "/api/faults/payments", None),
        ("POST", "/api/load", {"rate": 5}),
        ("DELETE", "/api/load", None),
    ],
)
async def test_a_change_without_origin_or_from_another_origin_is_refused(
    dashboard: ServedDashboard,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    without = await http.request(method, path, json=body, headers={TOKEN_HEADER: TOKEN})
    refused(without, f"a {method} request must carry the Origin header")
    for origin in ("http://evil.example", f"http://localhost:{dashboard.port}", "null"):
        other = await http.request(
            method, path, json=body, headers=trusted(dashboard, Origin=origin)
        )
        refused(other, "cross-origin request")
    assert dashboard.backend.changes == 0


async def test_a_read_from_another_origin_is_refused(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    headers = trusted(dashboard, Origin="http://evil.example")

    refused(await http.get("/api/traces", headers=headers), "cross-origin")


async def test_a_cors_preflight_from_another_origin_is_refused(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    headers = {
        "Origin": "http://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": TOKEN_HEADER,
    }

    response = await http.options("/api/faults/payments", headers=headers)

    refused(response, "cross-origin")
    assert "access-control-allow-origin" not in response.headers


async def test_the_page_itself_changes_faults_and_load(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    headers = trusted(dashboard)

    injected = await http.post("/api/faults/payments", json=FAULT, headers=headers)
    cleared = await http.delete("/api/faults/payments", headers=headers)
    started = await http.post("/api/load", json={"rate": 5, "duration": 2}, headers=headers)
    stopped = await http.delete("/api/load", headers=headers)

    assert [r.status_code for r in (injected, cleared, started, stopped)] == [200] * 4
    assert injected.json() == {"service": "payments", "fault": "30% of calls fail with status 14"}
    ((service, fault),) = dashboard.backend.injected
    assert (service, fault.abort_percent, fault.grpc_status) == ("payments", 30, 14)
    assert dashboard.backend.cleared == ["payments"]
    ((settings),) = dashboard.backend.loads
    assert (settings.rate, settings.duration) == (5.0, 2.0)
    assert dashboard.backend.stops == 1


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"abort_percent": 130}, "abort_percent must be between 0 and 100, got 130"),
        ({"abort_percent": 30, "grpc_status": "LOUD"}, "unknown gRPC status 'LOUD'"),
        ({"abort_percent": 30, "grpc_status": 0}, "cannot fail a call"),
        ({"delay_percent": 50}, "give abort_percent"),
        ({}, "give abort_percent"),
        ({"abort_percent": "30"}, "abort_percent must be a whole number"),
        ({"abort_percent": True}, "abort_percent must be a whole number"),
        ({"delay_ms": -5}, "delay_ms must be >= 0"),
        ({"abort_percent": 30, "why": "x"}, "unknown field 'why'"),
        ([30], "the body must be a JSON object"),
    ],
)
async def test_a_bad_fault_is_400_with_the_reason(
    dashboard: ServedDashboard, http: httpx.AsyncClient, body: Any, reason: str
) -> None:
    response = await http.post("/api/faults/payments", json=body, headers=trusted(dashboard))

    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]
    assert dashboard.backend.changes == 0


async def test_a_body_that_is_not_json_is_400(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    headers = trusted(dashboard)
    as_text = await http.post("/api/faults/payments", content=b"{}", headers=headers)
    broken = await http.post(
        "/api/faults/payments",
        content=b"{",
        headers={**headers, "Content-Type": "application/json"},
    )

    assert (as_text.status_code, broken.status_code) == (400, 400)
    assert "application/json" in as_text.json()["error"]
    assert "not JSON" in broken.json()["error"]


async def test_an_unknown_service_is_404(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    response = await http.post("/api/faults/billing", json=FAULT, headers=trusted(dashboard))

    assert response.status_code == 404
    assert response.json()["error"] == "no service 'billing'; services: users, payments"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"rate": 0}, "rate must be in (0, 10000]"),
        ({"duration": -1}, "duration must be positive"),
        ({"rate": "fast"}, "rate must be a number"),
        ({"concurrency": 1.5}, "concurrency must be a whole number"),
    ],
)
async def test_bad_load_settings_are_400(
    dashboard: ServedDashboard, http: httpx.AsyncClient, body: dict[str, Any], reason: str
) -> None:
    response = await http.post("/api/load", json=body, headers=trusted(dashboard))

    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]


async def test_a_second_load_run_is_409(
    dashboard: ServedDashboard, http: httpx.AsyncClient
) -> None:
    first = await http.post("/api/load", json={}, headers=trusted(dashboard))
    second = await http.post("/api/load", json={}, headers=trusted(dashboard))

    assert (first.status_code, second.status_code) == (200, 409)
    assert "stop it first" in second.json()["error"]


async def test_reads_check_their_parameters(http: httpx.AsyncClient) -> None:
    headers = {TOKEN_HEADER: TOKEN}

    assert (await http.get("/api/state", headers=headers)).json() == {"window_seconds": 30.0}
    window = await http.get("/api/state", params={"window": "7"}, headers=headers)
    assert window.status_code == 400
    assert "window must be one of 10, 30, 60 seconds" in window.json()["error"]
    limit = await http.get("/api/traces", params={"limit": "0"}, headers=headers)
    assert limit.status_code == 400
    bad_id = await http.get("/api/traces/xyz", headers=headers)
    assert bad_id.status_code == 400
    missing = await http.get(f"/api/traces/{'0' * 32}", headers=headers)
    assert missing.status_code == 404
    found = await http.get(f"/api/traces/{TRACE_ID}", headers=headers)
    assert found.json() == {"trace_id": TRACE_ID, "spans": []}
