"""Who may use the dashboard. Its fault controls can break the mesh, and any web page the user
has open can send requests to 127.0.0.1, so every request must pass three checks, in order:

1. Host is this server as the printed link names it (`127.0.0.1:PORT` or `localhost:PORT`).
   A page on a hostile domain that re-points its DNS name at 127.0.0.1 (DNS rebinding) reaches
   this port as the same origin as itself, but its requests carry its own name in Host.
2. Origin, when present, is this server; a request that changes something (any method but GET
   and HEAD) must carry it. Browsers send Origin on every cross-origin request and on every
   POST or DELETE, so another site's form or fetch is refused, and so is a CORS preflight.
3. The token of this run of the mesh: in the X-Shopmesh-Token header, or, for GET and HEAD
   only, in the `token` query parameter of the link `up` printed (the page itself, its script
   and stylesheet). Requests that change something need the header, which no cross-site form
   can set.

A refusal is 403 with a JSON body `{"error": reason}`. Every response also tells the browser
not to frame, cache, sniff or leak (Referer) the page.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from shopmesh.local.dashboard import TOKEN_HEADER, TOKEN_QUERY

SAFE_METHODS = frozenset({"GET", "HEAD"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

log = logging.getLogger("shopmesh.dashboard")


def _sockname(request: web.Request) -> tuple[str, int] | None:
    transport = request.transport
    address = transport.get_extra_info("sockname") if transport is not None else None
    return (str(address[0]), int(address[1])) if address else None


def local_port(request: web.Request) -> int | None:
    """The port the request came in on: the one Host must name (so port 0 works too)."""
    address = _sockname(request)
    return address[1] if address else None


def local_address(request: web.Request) -> str | None:
    """The address the request came in on (127.0.0.1, or another loopback address)."""
    address = _sockname(request)
    return address[0] if address else None


def refusal(request: web.Request, token: str) -> str | None:
    """Why `request` is refused (None: it may go on)."""
    port = local_port(request)
    host = request.headers.get("Host", "")
    ours = {f"{name}:{port}" for name in LOOPBACK_NAMES}
    if address := local_address(request):
        ours.add(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    if host not in ours:
        return (
            f"Host {host!r} is not this dashboard: open http://127.0.0.1:{port}/ "
            "(DNS rebinding protection)"
        )
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"http://{host}":
        return f"cross-origin request from {origin!r} refused"
    if origin is None and request.method not in SAFE_METHODS:
        return f"a {request.method} request must carry the Origin header of this page"
    given = request.headers.get(TOKEN_HEADER)
    if given is None and request.method in SAFE_METHODS:
        given = request.query.get(TOKEN_QUERY)
    if given is None:
        return (
            f"missing token: open the link `shopmesh up` printed (`shopmesh dashboard` prints "
            f"it again); API calls send it in {TOKEN_HEADER}"
        )
    if not secrets.compare_digest(given.encode(errors="replace"), token.encode()):
        return "wrong token: this link is from another run of the mesh (`shopmesh dashboard`)"
    return None


def guard(token: str) -> Middleware:
    """The middleware that refuses every request failing the checks above."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        reason = refusal(request, token)
        if reason is not None:
            log.warning("refused %s %s: %s", request.method, request.path, reason)
            return web.json_response({"error": reason}, status=403)
        return await handler(request)

    return middleware


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: on every response, refusals and errors included."""
    response.headers.update(SECURITY_HEADERS)
