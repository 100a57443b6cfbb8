"""HTTP/1.1 with JSON through the gateway (gRPC-JSON transcoding): the request curl would make,
from the standard library and from the curl binary itself."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.polling import CALL_TIMEOUT

CURL = shutil.which("curl")


@dataclass(frozen=True)
class HttpResponse:
    """An HTTP/1.1 response from the gateway, and how long it took."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float = 0.0

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


def _post(
    target: str, path: str, body: bytes | Mapping[str, Any], headers: Mapping[str, str]
) -> HttpResponse:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    host, port = target.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT)
    started = time.monotonic()
    try:
        connection.request("POST", path, payload, {"content-type": "application/json", **headers})
        response = connection.getresponse()
        received = {name.lower(): value for name, value in response.getheaders()}
        content = response.read()
        return HttpResponse(response.status, received, content, time.monotonic() - started)
    finally:
        connection.close()


async def post_json(
    target: str,
    path: str,
    body: bytes | Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """POST `body` (JSON, or raw bytes sent as they are) with extra `headers` over one HTTP/1.1
    connection. The only deadline on the client side is the socket's CALL_TIMEOUT, so whatever
    ends the call sooner is the mesh's doing."""
    return await asyncio.to_thread(_post, target, path, body, headers or {})


async def curl_json(
    target: str, path: str, body: str, *, https: bool = False, cacert: Path | None = None
) -> HttpResponse:
    """The same POST made by the curl binary (`curl -sS -X POST -H 'content-type:
    application/json' -d BODY http://TARGET/PATH`); with `https`, over TLS trusting `cacert`
    (`--cacert CA https://TARGET/PATH`)."""
    assert CURL is not None, "curl is not installed"
    marker = "\n--shopmesh-status:"
    command = [
        CURL,
        "--silent",
        "--show-error",
        # Straight to the loopback gateway, whatever proxy the environment names.
        "--noproxy",
        "*",
        "--max-time",
        f"{CALL_TIMEOUT:g}",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        body,
        "--dump-header",
        "-",
        "--write-out",
        f"{marker}%{{http_code}}",
        *(["--cacert", str(cacert)] if cacert is not None else []),
        f"{'https' if https else 'http'}://{target}{path}",
    ]
    completed = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, timeout=CALL_TIMEOUT + 5, check=False
    )
    assert completed.returncode == 0, completed.stderr.decode()
    output, _, status = completed.stdout.decode().rpartition(marker)
    head, _, content = output.partition("\r\n\r\n")
    headers = {}
    for line in head.splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpResponse(int(status), headers, content.encode())


def grpc_path(grpc_service: str, method: str) -> str:
    """The HTTP path of a gRPC method, also the path JSON clients POST to."""
    return f"/{grpc_service}/{method}"
