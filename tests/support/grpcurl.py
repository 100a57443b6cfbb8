"""The grpcurl binary aimed at the gateway, as a user runs it (server reflection, no proto
files): its JSON output and exit status read back into values a test can check."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shopmesh.gatewayclient import GatewayTarget
from tests.support.paths import GRPCURL
from tests.support.polling import CALL_TIMEOUT

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


PLAINTEXT = ("-plaintext",)


@dataclass(frozen=True)
class Grpcurl:
    """The grpcurl binary aimed at the gateway; `authority`, if not None, picks a service's
    virtual host (none is needed: the default one routes every public method and reflection,
    envoy/README.md). Every call sends `headers` (-H): a signed-in shopper's
    `authorization: Bearer <token>` (`signed_in`)."""

    target: str
    transport: tuple[str, ...] = PLAINTEXT
    """How it connects: -plaintext, TLS trusting a CA (`-cacert CA`), or, empty, TLS trusting
    the system's CAs."""
    headers: tuple[tuple[str, str], ...] = ()
    protoset: Path | None = None
    """A descriptor set to find methods in (-protoset) instead of server reflection."""

    @classmethod
    def to(cls, gateway: GatewayTarget) -> Grpcurl:
        """grpcurl as the connection help shows it for `gateway` (plaintext or -cacert)."""
        if gateway.ca is None:
            return cls(gateway.address)
        return cls(gateway.address, ("-cacert", str(gateway.ca)))

    def signed_in(self, metadata: Sequence[tuple[str, str]]) -> Grpcurl:
        """The same grpcurl sending a shopper's metadata (its access token) with every call."""
        return dataclasses.replace(self, headers=tuple(metadata))

    def command(
        self, authority: str | None, *args: str, max_time: float = CALL_TIMEOUT
    ) -> list[str]:
        """The command line, as a user would type it."""
        options = [*self.transport, "-format-error", "-max-time", f"{max_time:g}"]
        if authority is not None:
            options += ["-authority", authority]
        if self.protoset is not None:
            options += ["-protoset", str(self.protoset)]
        for name, value in self.headers:
            options += ["-H", f"{name}: {value}"]
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
        self,
        authority: str | None,
        method: str,
        data: Mapping[str, Any],
        max_time: float = CALL_TIMEOUT,
    ) -> Any:
        """Invoke `method` (`pkg.Service/Method`) and return its JSON response."""
        return (await self.run(authority, method, data=data, max_time=max_time)).json()
