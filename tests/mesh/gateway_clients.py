"""Real clients of the edge gateway, as a user of the running mesh would use them: the grpcurl
binary (server reflection, no proto files), plain HTTP/1.1 with JSON (gRPC-JSON transcoding)
through the standard library and through curl, and raw gRPC calls that report their status.

Every call is bounded in time; nothing here assumes a port.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

GRPCURL = Path(sys.executable).parent / "grpcurl"
CURL = shutil.which("curl")
CALL_TIMEOUT = 10.0
"""Seconds any one client process or request may take before the test fails."""

# grpcurl exits with 64 + the gRPC status code when the call fails with that status.
GRPCURL_STATUS_EXIT_BASE = 64


@dataclass(frozen=True)
class GrpcurlResult:
    """What one grpcurl run printed, and how it ended."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def messages(self) -> list[Any]:
        """Every JSON document grpcurl printed (one per response message of a stream)."""
        decoder = json.JSONDecoder()
        text, position = self.stdout, 0
        documents: list[Any] = []
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position == len(text):
                return documents
            document, position = decoder.raw_decode(text, position)
            documents.append(document)

    def json(self) -> Any:
        """The single response of a successful unary call."""
        assert self.returncode == 0, self.explain()
        (document,) = self.messages()
        return document

    def status(self) -> tuple[grpc.StatusCode, Any]:
        """The failed call's status code and the `-format-error` JSON grpcurl printed on
        stderr (code, message, details)."""
        assert self.returncode > GRPCURL_STATUS_EXIT_BASE, self.explain()
        error = json.loads(self.stderr)
        code = _status_code(int(error.get("code", 0)))
        assert self.returncode == GRPCURL_STATUS_EXIT_BASE + code.value[0], self.explain()
        return code, error

    def explain(self) -> str:
        return (
            f"grpcurl {' '.join(self.args)} exited {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


def _status_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    raise AssertionError(f"unknown gRPC status code {number}")


@dataclass(frozen=True)
class Grpcurl:
    """The grpcurl binary aimed at the gateway, plaintext; `authority` picks the service's
    virtual host, which is what routes server reflection (envoy/README.md)."""

    target: str

    def command(
        self, authority: str | None, *args: str, max_time: float = CALL_TIMEOUT
    ) -> list[str]:
        """The command line, as a user would type it."""
        options = ["-plaintext", "-format-error", "-max-time", f"{max_time:g}"]
        if authority is not None:
            options += ["-authority", authority]
        return [str(GRPCURL), *options, *args]

    async def run(
        self,
        authority: str | None,
        *args: str,
        data: Mapping[str, Any] | None = None,
        max_time: float = CALL_TIMEOUT,
    ) -> GrpcurlResult:
        """Run `grpcurl [flags] <gateway> ARGS` (`list`, `describe SYMBOL` or a method),
        with `data` as the request (-d); waits for it to end (it ends by -max-time at the
        latest)."""
        request = ["-d", json.dumps(data)] if data is not None else []
        command = [*self.command(authority, *request, max_time=max_time), self.target, *args]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), max_time + 5)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"grpcurl did not end within -max-time: {command}") from None
        assert process.returncode is not None
        return GrpcurlResult(
            tuple(command[1:]), process.returncode, stdout.decode(), stderr.decode()
        )

    async def call(
        self, authority: str, method: str, data: Mapping[str, Any], max_time: float = CALL_TIMEOUT
    ) -> Any:
        """Invoke `method` (`pkg.Service/Method`) and return its JSON response."""
        return (await self.run(authority, method, data=data, max_time=max_time)).json()


@dataclass(frozen=True)
class HttpResponse:
    """An HTTP/1.1 response from the gateway."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


def post_json(target: str, path: str, body: bytes | Mapping[str, Any]) -> HttpResponse:
    """POST `body` (JSON, or raw bytes to send as they are) to `path` over one HTTP/1.1
    connection: the request curl would make, from the standard library."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    host, port = target.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT)
    try:
        connection.request("POST", path, payload, {"content-type": "application/json"})
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return HttpResponse(response.status, headers, response.read())
    finally:
        connection.close()


async def apost_json(target: str, path: str, body: bytes | Mapping[str, Any]) -> HttpResponse:
    """`post_json` off the event loop."""
    return await asyncio.to_thread(post_json, target, path, body)


async def curl_json(target: str, path: str, body: str) -> HttpResponse:
    """The same POST made by the curl binary (`curl -sS -X POST -H 'content-type:
    application/json' -d BODY http://TARGET/PATH`)."""
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
        f"http://{target}{path}",
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


def _raw(message: bytes) -> bytes:
    return message


async def call_raw(
    channel: grpc.aio.Channel, path: str, message: bytes = b"", within: float = CALL_TIMEOUT
) -> grpc.StatusCode:
    """Call `path` with an already serialized request (gRPC deadline: `within` seconds); the
    status code the call ends with."""
    method = channel.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)
    try:
        await method(message, timeout=within)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK
