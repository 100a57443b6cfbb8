"""A client of one Envoy's admin endpoint, which listens only on a Unix socket in a private
directory: HTTP over that socket (httpx), and the few endpoints shopmesh reads and writes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_TIMEOUT = 2.0


class AdminError(RuntimeError):
    """An admin endpoint answered with an error; the message names the Envoy and the path."""


class AdminUnreachable(AdminError, OSError):
    """Nothing answers on the admin socket (the Envoy is not running, or not yet)."""


def parse_stats(body: str) -> dict[str, int]:
    """Envoy's text /stats as name -> value (counters and gauges; histograms are skipped)."""
    values: dict[str, int] = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            values[name] = int(value)
    return values


def parse_host_health(body: str) -> dict[str, dict[str, str]]:
    """Envoy's text /clusters as cluster -> host -> health flags ("healthy" when healthy)."""
    hosts: dict[str, dict[str, str]] = {}
    for line in body.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            hosts.setdefault(parts[0], {})[parts[1]] = parts[3]
    return hosts


@dataclass(frozen=True)
class AdminClient:
    """The admin endpoint of the Envoy `name`, at `socket`. Each call opens its own
    connection, so one client may be used from any event loop."""

    name: str
    socket: Path

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        within: float = DEFAULT_TIMEOUT,
    ) -> tuple[int, str]:
        """(status, body) of one request. Raises AdminUnreachable when nothing answers."""
        # Plain HTTP over a Unix socket: verify=False spares loading the CA bundle for a TLS
        # context never used (30 ms a request, which made sampling every Envoy take 0.4 s).
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket), verify=False)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://envoy-admin", timeout=within
            ) as client:
                response = await client.request(method, path, params=params)
        except httpx.TransportError as error:
            raise AdminUnreachable(f"{self.name}: admin {self.socket}: {error}") from None
        return response.status_code, response.text

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The body of a GET that must succeed."""
        return await self._ok("GET", path, params)

    async def post(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The body of a POST that must succeed."""
        return await self._ok("POST", path, params)

    async def _ok(self, method: str, path: str, params: Mapping[str, str] | None) -> str:
        status, body = await self.request(method, path, params)
        if status != 200:
            raise AdminError(f"{self.name}: {method} {path} answered {status}: {body[:200]}")
        return body

    async def ready(self) -> bool:
        """Whether the Envoy is up and serving (/ready answers 200, "LIVE")."""
        try:
            status, _ = await self.request("GET", "/ready")
        except AdminUnreachable:
            return False
        return status == 200

    async def state(self) -> str:
        """/ready's word for the server state (LIVE, PRE_INITIALIZING, ...), or "unreachable"."""
        try:
            status, body = await self.request("GET", "/ready")
        except AdminUnreachable:
            return "unreachable"
        return body.strip() or str(status)

    async def stats(self) -> dict[str, int]:
        """Every counter and gauge, by stat name."""
        return parse_stats(await self.get("/stats"))

    async def stats_json(
        self, pattern: str | None = None, used_only: bool = False
    ) -> dict[str, Any]:
        """/stats as Envoy's JSON document: counters and gauges (`{"name", "value"}`) and
        histograms with their cumulative buckets (`{"histograms": [{"name", "buckets":
        [{"upper_bound", "interval", "cumulative"}]}]}`); only the stats whose names match
        the regex `pattern` (RE2) when one is given, and with `used_only` only those ever
        written (a counter left out is 0)."""
        params = {"format": "json", "histogram_buckets": "cumulative"}
        if pattern is not None:
            params["filter"] = pattern
        if used_only:
            params["usedonly"] = ""
        document: dict[str, Any] = json.loads(await self.get("/stats", params))
        return document

    async def host_health(self) -> dict[str, dict[str, str]]:
        """Cluster -> host:port -> health flags of every upstream host."""
        return parse_host_health(await self.get("/clusters"))

    async def runtime(self) -> dict[str, Mapping[str, Any]]:
        """The runtime entries (key -> its layers and final value)."""
        entries: dict[str, Mapping[str, Any]] = json.loads(await self.get("/runtime")).get(
            "entries", {}
        )
        return entries

    async def runtime_modify(self, values: Mapping[str, str]) -> None:
        """Set runtime keys in the admin layer; an empty value removes a key."""
        await self.post("/runtime_modify", values)

    async def served_serials(self) -> set[int]:
        """Serial numbers of the certificates this Envoy presents now."""
        document = json.loads(await self.get("/certs"))
        return {
            int(cert["serial_number"], 16)
            for entry in document.get("certificates", [])
            for cert in entry.get("cert_chain", [])
        }

    async def listener_ports(self) -> dict[str, int]:
        """Listener name -> the TCP port it is bound to (Unix socket listeners are left out)."""
        document = json.loads(await self.get("/listeners", {"format": "json"}))
        ports = {}
        for entry in document.get("listener_statuses", []):
            address = entry.get("local_address", {}).get("socket_address")
            if address is not None:
                ports[entry["name"]] = int(address["port_value"])
        return ports
