"""The fuzz cases: one request each, drawn from a seeded `random.Random`, in six families
(FAMILIES): random bodies in well-formed gRPC framing, broken gRPC framing, mangled paths,
JSON and not-JSON over HTTP/1.1 for the transcoder, wrong HTTP verbs, and odd HTTP/2 frames
and headers. Each case knows how long an answer may take and describes itself for a report.

Most requests carry a signed-in shopper's access token (SIGNED_IN_SHARE): without one, the
gateway refuses every protected method (UNAUTHENTICATED, TOKEN_MISSING) before it reads the
body, and the fuzzed bodies would never reach an app. The rest carry none or a forged one."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from hpack import Encoder
from hyperframe.frame import (
    DataFrame,
    ExtensionFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from scripts.fuzz.bodies import (
    FRAMINGS,
    frame,
    not_json,
    protobuf_shaped,
    random_bytes,
    random_json,
)
from scripts.fuzz.catalog import HEALTH_CHECK, REFLECTION_INFO, Catalog, Method
from scripts.fuzz.h2wire import Finish, H2Request
from scripts.fuzz.http1 import Http1Request

GRPC = "application/grpc"
SIGNED_IN_SHARE = 0.9
"""Of the requests: with the shopper's token; half of the others with none, half forged."""
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Case:
    """One fuzzed request and what is due for it."""

    number: int
    family: str
    variant: str
    path: str
    request: H2Request | Http1Request
    grpc: bool
    """A gRPC caller's request (HTTP/2, content-type application/grpc...): a gRPC client
    reads a status from its answer, so a bare HTTP error reaches it as UNKNOWN."""
    streaming: bool
    """The path may reach a streaming method: no answer is due in any time."""
    answer_within: float
    """Seconds within which the edge must end it (unary calls)."""

    def describe(self) -> str:
        """A one-line account of the request, enough to send it again by hand."""
        request = self.request
        if isinstance(request, Http1Request):
            headers = dict(request.headers)
            body = request.body
            what = f"HTTP/1.1 {request.method} {request.target}"
            extra = f" content-type={headers.get('content-type', 'none')}"
        else:
            headers = dict(request.headers)
            body = b"".join(request.chunks)
            what = f"HTTP/2 {headers.get(':method', '-')} {headers.get(':path', '(no :path)')}"
            extra = f" {len(request.chunks)} DATA frames, finish={request.finish.value}"
            if request.inject:
                extra += f", +{len(request.inject)} raw frame bytes"
        shown = body[:24].hex() + ("..." if len(body) > 24 else "")
        return f"#{self.number} [{self.family}: {self.variant}] {what}{extra} body={shown}"


def grpc_headers(path: str, authority: str, method: str = "POST") -> tuple[tuple[str, str], ...]:
    return (
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", GRPC),
        ("te", "trailers"),
    )


class Maker:
    """Draws cases for one gateway from `rng`."""

    def __init__(
        self, rng: random.Random, catalog: Catalog, authority: str, signed_in: Headers
    ) -> None:
        self.rng = rng
        self.catalog = catalog
        self.authority = authority
        self.signed_in = signed_in

    def caller(self) -> Headers:
        """Who the request is from: mostly the signed-in shopper, else no one or a forgery."""
        roll = self.rng.random()
        if roll < SIGNED_IN_SHARE:
            return self.signed_in
        if roll < (1 + SIGNED_IN_SHARE) / 2:
            return ()
        # Never empty: HTTP/1.1 clients refuse a header value that ends in a space.
        forged = ".".join(self.rng.randbytes(12).hex() for _ in range(3))
        return (("authorization", f"Bearer {forged}"),)

    def grpc_headers(self, path: str, method: str = "POST") -> Headers:
        return grpc_headers(path, self.authority, method) + self.caller()

    # --- drawing targets and bodies ---

    def unary(self, exposed_share: float = 0.8) -> Method:
        pool = self.catalog.exposed if self.rng.random() < exposed_share else self.catalog.unexposed
        unary = [m for m in pool if not m.streaming] or list(self.catalog.methods)
        return self.rng.choice(unary)

    def any_path(self) -> tuple[str, Method | None]:
        roll = self.rng.random()
        if roll < 0.55:
            method = self.rng.choice(self.catalog.exposed)
        elif roll < 0.85:
            method = self.rng.choice(self.catalog.unexposed)
        else:
            service = self.rng.choice(self.catalog.methods).path.rsplit("/", 1)[0]
            return self.rng.choice((f"{service}/NoSuchMethod", "/nope.v1.Nope/Get", "/")), None
        return method.path, method

    def message(self, method: Method | None) -> bytes:
        roll = self.rng.random()
        if roll < 0.2:
            return b""
        if roll < 0.6:
            return protobuf_shaped(self.rng, method.message if method else None)
        return random_bytes(self.rng)

    def case(
        self,
        number: int,
        family: str,
        variant: str,
        path: str,
        request: H2Request | Http1Request,
        grpc: bool,
    ) -> Case:
        return Case(
            number,
            family,
            variant,
            path,
            request,
            grpc,
            self.catalog.streams(path),
            self.catalog.edge_timeout,
        )

    def grpc_case(
        self,
        number: int,
        family: str,
        variant: str,
        path: str,
        chunks: tuple[bytes, ...],
    ) -> Case:
        request = H2Request(self.grpc_headers(path), chunks)
        return self.case(number, family, variant, path, request, True)

    # --- the families ---

    def grpc_body(self, number: int) -> Case:
        path, method = self.any_path()
        variant = "protobuf-shaped" if self.rng.random() < 0.5 else "random bytes"
        body = (
            protobuf_shaped(self.rng, method.message if method else None)
            if variant == "protobuf-shaped"
            else random_bytes(self.rng)
        )
        return self.grpc_case(number, "gRPC body", variant, path, (frame(body),))

    def grpc_framing(self, number: int) -> Case:
        method = self.unary()
        name = self.rng.choice([n for n in FRAMINGS if n != "well-framed"])
        chunks = FRAMINGS[name](self.rng, self.message(method))
        return self.grpc_case(number, "gRPC framing", name, method.path, chunks)

    def odd_path(self, number: int) -> Case:
        method = self.unary(exposed_share=1.0)
        service, _, name = method.path[1:].partition("/")
        hidden = self.rng.choice(self.catalog.unexposed).path
        paths = {
            "query string": f"{method.path}?x",
            "query naming another method": f"{method.path}?x={hidden.rsplit('/', 1)[1]}",
            "query naming a hidden path": f"{method.path}?x={hidden}",
            "reflection prefix then ..": f"{REFLECTION_INFO.rsplit('/', 1)[0]}/../..{hidden}",
            "dot segments": f"/{service}/../{service}/{name}",
            "double slash": f"/{service}//{name}",
            "leading double slash": f"/{method.path}",
            "trailing slash": f"{method.path}/",
            "escaped slash": f"/{service}%2F{name}",
            "escaped letters": f"/{service}/%{ord(name[0]):02X}{name[1:]}",
            "escaped dots": f"/{service.replace('.', '%2E')}/{name}",
            "lower-case method": f"/{service}/{name.lower()}",
            "fragment": f"{method.path}#x",
            "health then ..": f"{HEALTH_CHECK}/../..{hidden}",
            "backslash": f"/{service}\\{name}",
        }
        variant = self.rng.choice(sorted(paths))
        body = frame(self.message(method))
        return self.grpc_case(number, "odd path", variant, paths[variant], (body,))

    def json(self, number: int) -> Case:
        path, method = self.any_path() if self.rng.random() < 0.2 else (None, None)
        if path is None:
            method = self.unary(exposed_share=1.0)
            path = method.path
        kind = self.rng.choice(("random JSON", "random JSON", "not JSON"))
        body = (
            random_json(self.rng, method.message if method else None)
            if kind == "random JSON"
            else not_json(self.rng)
        )
        content_type = self.rng.choice(
            (
                "application/json",
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                None,
                "application/x-www-form-urlencoded",
                "application/grpc-web+json",
            )
        )
        headers = ((("content-type", content_type),) if content_type else ()) + self.caller()
        variant = f"{kind}, content-type {content_type or 'none'}"
        request = Http1Request("POST", path, headers, body)
        return self.case(number, "JSON", variant, path, request, False)

    def wrong_verb(self, number: int) -> Case:
        method = self.unary(exposed_share=0.9)
        verb = self.rng.choice(("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"))
        body = frame(self.message(method)) if verb not in ("GET", "HEAD") else b""
        if self.rng.random() < 0.5:
            variant = f"HTTP/2 {verb} with gRPC content-type"
            headers = self.grpc_headers(method.path, verb)
            h2 = H2Request(headers, (body,) if body else ())
            return self.case(number, "wrong verb", variant, method.path, h2, True)
        content_type = self.rng.choice((GRPC, "application/json", "application/grpc-web", None))
        headers = ((("content-type", content_type),) if content_type else ()) + self.caller()
        variant = f"HTTP/1.1 {verb}, content-type {content_type or 'none'}"
        request = Http1Request(verb, method.path, headers, body)
        return self.case(number, "wrong verb", variant, method.path, request, False)

    def h2_frames(self, number: int) -> Case:
        method = self.unary()
        path = method.path
        body = frame(self.message(method))
        base = self.grpc_headers(path)
        variants = self.h2_variants(path, base, body)
        variant = self.rng.choice(sorted(variants))
        request = variants[variant]
        grpc = dict(request.headers).get("content-type", "").startswith(GRPC)
        return self.case(number, "HTTP/2 frames", variant, path, request, grpc)

    def h2_variants(
        self, path: str, base: tuple[tuple[str, str], ...], body: bytes
    ) -> dict[str, H2Request]:
        rng = self.rng

        def headers(
            add: tuple[tuple[str, str], ...] = (), drop: tuple[str, ...] = ()
        ) -> tuple[tuple[str, str], ...]:
            kept = tuple((k, v) for k, v in base if k not in drop)
            return kept + add

        def plain(add: tuple[tuple[str, str], ...] = (), drop: tuple[str, ...] = ()) -> H2Request:
            return H2Request(headers(add, drop), (body,))

        def then(*frames: bytes) -> H2Request:
            return H2Request(base, (body,), inject=b"".join(frames))

        # Around Envoy's default limit of 60 KiB of request headers; h2 takes seconds to
        # encode much larger ones, which would stall the fuzzer.
        huge = rng.choice((8_000, 62_000))
        timeout = rng.choice(("0n", "1n", "99999999H", "abc", "-1S", "1m", "3S"))
        content_type = rng.choice(("application/grpc+json", "application/grpc-web", "text/plain"))
        foreign = Encoder().encode([*base])
        return {
            "header name with underscore": plain((("x_user_id", "u-1"), ("grpc_timeout", "1S"))),
            f"huge header ({huge} bytes)": plain((("x-fuzz", "a" * huge),)),
            "150 headers": plain(tuple((f"x-fuzz-{i}", str(i)) for i in range(150))),
            "upper-case header name": plain((("X-Fuzz", "1"),)),
            "connection header": plain((("connection", "keep-alive"),)),
            "no :authority": plain(drop=(":authority",)),
            "no :path": plain(drop=(":path",)),
            "empty :path": plain(((":path", ""),), drop=(":path",)),
            "path without /": plain(((":path", path[1:]),), drop=(":path",)),
            "no te": plain(drop=("te",)),
            "te: gzip": plain((("te", "gzip"),), drop=("te",)),
            "no content-type": plain(drop=("content-type",)),
            f"content-type {content_type}": plain(
                (("content-type", content_type),), drop=("content-type",)
            ),
            f"grpc-timeout {timeout}": plain((("grpc-timeout", timeout),)),
            "content-length lies": plain((("content-length", str(len(body) + 10)),)),
            "client trailers": H2Request(base, (body,), trailers=(("grpc-status", "0"),)),
            "reset mid-message": H2Request(base, (body[:3],), finish=Finish.RESET),
            "reset after headers": H2Request(base, finish=Finish.RESET),
            "never ends": H2Request(base, (body,), finish=Finish.OPEN),
            "DATA after END_STREAM": then(DataFrame(1, b"\0", flags=["END_STREAM"]).serialize()),
            "unknown frame type": then(ExtensionFrame(0xFA, 0, body=b"fuzz").serialize()),
            "WINDOW_UPDATE of 0": then(WindowUpdateFrame(1, window_increment=0).serialize()),
            "PRIORITY on itself": then(PriorityFrame(1, depends_on=1).serialize()),
            "50 PINGs": then(*(PingFrame(0, opaque_data=bytes(8)).serialize() for _ in range(50))),
            "SETTINGS of unknown id": then(SettingsFrame(0, settings={0x99: 1}).serialize()),
            "HEADERS on an even stream": then(
                HeadersFrame(2, data=foreign, flags=["END_HEADERS", "END_STREAM"]).serialize()
            ),
        }


FAMILIES: dict[str, tuple[float, Callable[[Maker, int], Case]]] = {
    "gRPC body": (0.25, Maker.grpc_body),
    "gRPC framing": (0.2, Maker.grpc_framing),
    "odd path": (0.1, Maker.odd_path),
    "JSON": (0.2, Maker.json),
    "wrong verb": (0.1, Maker.wrong_verb),
    "HTTP/2 frames": (0.15, Maker.h2_frames),
}
"""Family -> (share of the cases, how to draw one)."""


def draw_cases(
    rng: random.Random,
    catalog: Catalog,
    authority: str,
    count: int,
    families: list[str],
    signed_in: Headers = (),
) -> list[Case]:
    """`count` cases from `families` (in their shares), numbered from 1; `signed_in` is the
    metadata of a signed-in shopper, which most of them carry."""
    maker = Maker(rng, catalog, authority, signed_in)
    weights = [FAMILIES[f][0] for f in families]
    chosen = rng.choices(families, weights, k=count)
    return [FAMILIES[family][1](maker, number) for number, family in enumerate(chosen, 1)]
