"""The dashboard's HTTP routes: the page and its two files, and the JSON API the page calls.
Every route is behind the guard of `shopmesh.dashboard.security`; the mesh itself is reached
through a `Backend` (`shopmesh.dashboard.state.MeshView`; tests give a fake).

    GET    /                      the page (the link `up` prints: /?token=...)
    GET    /static/<file>         its script, stylesheet and icon
    GET    /healthz               200 when serving (`up` and `status` ask)
    GET    /api/state?window=30   graph, golden metrics, processes, load run
    GET    /api/traces?limit=30   recent traces, newest first
    GET    /api/traces/<id>       one trace as a waterfall
    POST   /api/faults/<service>  inject {abort_percent, grpc_status, delay_ms, delay_percent}
    DELETE /api/faults/<service>  clear every fault of the service
    POST   /api/load              start a load run {rate, duration, concurrency}
    DELETE /api/load              stop it

Bad input is 400 with a JSON body `{"error": reason}`; an unknown service or trace 404; a
second load run 409; a sidecar that did not take a fault 502.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from shopmesh.dashboard.load import LoadBusy
from shopmesh.dashboard.security import add_security_headers, guard
from shopmesh.dashboard.state import DEFAULT_WINDOW, WINDOWS
from shopmesh.envoy.faults import Fault, FaultError
from shopmesh.local.dashboard import HEALTH_PATH
from shopmesh.local.errors import MeshError
from shopmesh.observe.load import LoadSettings

ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
TOKEN_PLACEHOLDER = "{{token}}"
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_TRACES = 100
FAULT_FIELDS = ("abort_percent", "grpc_status", "delay_ms", "delay_percent")
LOAD_FIELDS = ("rate", "duration", "concurrency")


class Backend(Protocol):
    """What the routes need of the mesh."""

    @property
    def services(self) -> Sequence[str]: ...

    async def state(self, window: float) -> dict[str, Any]: ...

    async def traces(self, limit: int) -> dict[str, Any]: ...

    async def trace(self, trace_id: str) -> dict[str, Any] | None: ...

    async def inject(self, service: str, fault: Fault) -> None: ...

    async def clear(self, service: str) -> None: ...

    def start_load(self, settings: LoadSettings) -> dict[str, Any]: ...

    def stop_load(self) -> dict[str, Any]: ...


def error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class BadRequest(Exception):
    """The request's input makes no sense; the message says why (HTTP 400)."""


def asset(name: str) -> str:
    return (resources.files("shopmesh.dashboard") / "static" / name).read_text(encoding="utf-8")


async def json_body(request: web.Request, fields: Sequence[str]) -> dict[str, Any]:
    """The request's JSON object, holding none but `fields`."""
    if request.content_type != "application/json":
        raise BadRequest("send the body as application/json")
    try:
        body = await request.json()
    except json.JSONDecodeError as problem:
        raise BadRequest(f"the body is not JSON: {problem}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; expected some of {', '.join(fields)}")
    return body


def whole(body: dict[str, Any], name: str) -> int | None:
    """The whole number `body[name]` (None when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be a whole number, got {value!r}")
    return value


def number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number, got {value!r}")
    return float(value)


def fault_of(body: dict[str, Any]) -> Fault:
    """The fault a request asks for, checked as `shopmesh fault` checks it (FaultError)."""
    status = body.get("grpc_status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int | str)):
        raise BadRequest(f"grpc_status must be a status name or number, got {status!r}")
    return Fault.of(
        abort_percent=whole(body, "abort_percent"),
        grpc_status=status,
        delay_ms=whole(body, "delay_ms"),
        delay_percent=whole(body, "delay_percent"),
    )


def settings_of(body: dict[str, Any]) -> LoadSettings:
    """The load a request asks for, over the defaults of `shopmesh load` (ValueError)."""
    given: dict[str, Any] = {
        "rate": number(body, "rate"),
        "duration": number(body, "duration"),
        "concurrency": whole(body, "concurrency"),
    }
    return LoadSettings(**{name: value for name, value in given.items() if value is not None})


class Routes:
    """The handlers, over one backend and the page made for one token."""

    def __init__(self, backend: Backend, token: str) -> None:
        self.backend = backend
        # token_urlsafe needs no escaping; escaped all the same, as any value put in HTML.
        self.page = asset("index.html").replace(TOKEN_PLACEHOLDER, html.escape(token))
        self.assets = {name: asset(name) for name in ASSETS}

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            return error(404, f"no file {name!r}")
        return web.Response(text=self.assets[name], content_type=ASSETS[name])

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"serving": True})

    async def state(self, request: web.Request) -> web.Response:
        raw = request.query.get("window", str(DEFAULT_WINDOW))
        try:
            window = float(raw)
        except ValueError:
            window = -1.0
        if window not in WINDOWS:
            offered = ", ".join(f"{w:g}" for w in WINDOWS)
            return error(400, f"window must be one of {offered} seconds, got {raw!r}")
        return web.json_response(await self.backend.state(window))

    async def traces(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", "30")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_TRACES:
            return error(400, f"limit must be a whole number from 1 to {MAX_TRACES}, got {raw!r}")
        return web.json_response(await self.backend.traces(int(raw)))

    async def trace(self, request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"].lower()
        if not TRACE_ID.match(trace_id):
            return error(400, f"a trace id is 32 hexadecimal digits, got {trace_id!r}")
        found = await self.backend.trace(trace_id)
        if found is None:
            return error(404, f"no span of trace {trace_id} has reached the collector")
        return web.json_response(found)

    def _unknown(self, service: str) -> web.Response | None:
        if service in self.backend.services:
            return None
        return error(404, f"no service {service!r}; services: {', '.join(self.backend.services)}")

    async def inject(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        if (unknown := self._unknown(service)) is not None:
            return unknown
        try:
            fault = fault_of(await json_body(request, FAULT_FIELDS))
        except (BadRequest, FaultError) as problem:
            return error(400, str(problem))
        try:
            await self.backend.inject(service, fault)
        except MeshError as problem:
            return error(502, str(problem))
        return web.json_response({"service": service, "fault": fault.describe()})

    async def clear(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        if (unknown := self._unknown(service)) is not None:
            return unknown
        try:
            await self.backend.clear(service)
        except MeshError as problem:
            return error(502, str(problem))
        return web.json_response({"service": service, "fault": None})

    async def start_load(self, request: web.Request) -> web.Response:
        try:
            settings = settings_of(await json_body(request, LOAD_FIELDS))
        except (BadRequest, ValueError) as problem:
            return error(400, str(problem))
        try:
            return web.json_response(self.backend.start_load(settings))
        except LoadBusy as busy:
            return error(409, str(busy))

    async def stop_load(self, request: web.Request) -> web.Response:
        return web.json_response(self.backend.stop_load())


def create_app(backend: Backend, token: str) -> web.Application:
    """The dashboard's application: every route behind the guard for `token`."""
    routes = Routes(backend, token)
    app = web.Application(middlewares=[guard(token)])
    app.on_response_prepare.append(add_security_headers)
    app.add_routes(
        [
            web.get("/", routes.index),
            web.get("/static/{name}", routes.static),
            web.get(HEALTH_PATH, routes.health),
            web.get("/api/state", routes.state),
            web.get("/api/traces", routes.traces),
            web.get("/api/traces/{trace_id}", routes.trace),
            web.post("/api/faults/{service}", routes.inject),
            web.delete("/api/faults/{service}", routes.clear),
            web.post("/api/load", routes.start_load),
            web.delete("/api/load", routes.stop_load),
        ]
    )
    return app
