"""How a client reaches the edge gateway: its address and, when it serves TLS (`up
--edge-tls`), the CA its certificate chains to. One place decides plaintext or TLS for every
in-repo client: `shopmesh load`, the dashboard, the connection help `up` prints, the tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio, ssl_channel_credentials


@dataclass(frozen=True)
class GatewayTarget:
    """The gateway at `address` (host:port): TLS verified against `ca` when given, plaintext
    otherwise."""

    address: str
    ca: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def url(self) -> str:
        """The base URL of JSON calls (`<url>/<pkg.Service>/<Method>`)."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def channel(self, options: Sequence[tuple[str, Any]] = ()) -> aio.Channel:
        """A gRPC channel to the gateway; with TLS, the certificate must chain to `ca` and
        name the host of `address`."""
        if self.ca is None:
            return aio.insecure_channel(self.address, options=options)
        credentials = ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return aio.secure_channel(self.address, credentials, options=options)
