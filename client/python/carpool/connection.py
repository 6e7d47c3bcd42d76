"""How a client reaches its coordinator: URLs, TLS, token, as the `carpool` CLI takes them.

Every option falls back to the environment the CLI reads: CARPOOL_COORDINATOR (the URL, or
a comma-separated list: an active coordinator and its standbys), CARPOOL_TOKEN or
CARPOOL_TOKEN_FILE, CARPOOL_TLS_CA, CARPOOL_TLS_DOMAIN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import grpc

DEFAULT_COORDINATOR = "http://127.0.0.1:50051"

# Channel options: keepalive as the CLI's, and no cap on what a result may weigh.
CHANNEL_OPTIONS: List[Tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


@dataclass(frozen=True)
class Endpoint:
    """One coordinator: `host:port` and whether it speaks TLS."""

    address: str
    tls: bool


@dataclass(frozen=True)
class Connection:
    """Where and how to connect. Build it with `Connection.resolve`."""

    endpoints: Sequence[Endpoint]
    token: Optional[str]
    ca_pem: Optional[bytes]
    server_name: Optional[str]
    timeout: Optional[float]

    @staticmethod
    def resolve(
        target: Optional[str] = None,
        *,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca_file: Optional[str] = None,
        server_name: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "Connection":
        """Settings from the arguments, else the environment, else the defaults.

        `target`: `host:port`, `http://host:port` or `https://host:port`, or several
        comma-separated. `https://` uses TLS: the CA in `ca_file` (PEM) if given, else the
        system's roots; `server_name` checks the certificate against that name instead of the
        URL's host. `token` (or the first line of `token_file`) is sent as
        `authorization: Bearer …`. `timeout` bounds each unary call, in seconds.
        """
        target = target or os.environ.get("CARPOOL_COORDINATOR") or DEFAULT_COORDINATOR
        endpoints = [_endpoint(t.strip()) for t in target.split(",") if t.strip()]
        if not endpoints:
            raise ValueError(f"{target!r} names no coordinator")
        if token is None and token_file is None:
            token = os.environ.get("CARPOOL_TOKEN") or None
            token_file = os.environ.get("CARPOOL_TOKEN_FILE") or None
        if token is not None and token_file is not None:
            raise ValueError("give the token or a token file, not both")
        if token_file is not None:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
            if not token:
                raise ValueError(f"{token_file}: the token file is empty")
        ca_file = ca_file or os.environ.get("CARPOOL_TLS_CA") or None
        ca_pem = None
        if ca_file is not None:
            with open(ca_file, "rb") as f:
                ca_pem = f.read()
        server_name = server_name or os.environ.get("CARPOOL_TLS_DOMAIN") or None
        if (ca_pem or server_name) and not any(e.tls for e in endpoints):
            raise ValueError("a CA file or server name is for https:// coordinators; the target has none")
        return Connection(endpoints, token, ca_pem, server_name, timeout)

    @property
    def metadata(self) -> Optional[Tuple[Tuple[str, str], ...]]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def _options(self, endpoint: Endpoint) -> List[Tuple[str, object]]:
        options: List[Tuple[str, object]] = list(CHANNEL_OPTIONS)
        if endpoint.tls and self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options

    def channel(self, endpoint: Endpoint) -> grpc.Channel:
        """A channel to one coordinator."""
        if endpoint.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
            return grpc.secure_channel(endpoint.address, creds, options=self._options(endpoint))
        return grpc.insecure_channel(endpoint.address, options=self._options(endpoint))

    def aio_channel(self, endpoint: Endpoint) -> "grpc.aio.Channel":
        """An asyncio channel to one coordinator."""
        if endpoint.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
            return grpc.aio.secure_channel(endpoint.address, creds, options=self._options(endpoint))
        return grpc.aio.insecure_channel(endpoint.address, options=self._options(endpoint))


def _endpoint(one: str) -> Endpoint:
    if one.startswith("https://"):
        return Endpoint(one[len("https://"):].rstrip("/"), True)
    if one.startswith("http://"):
        return Endpoint(one[len("http://"):].rstrip("/"), False)
    if "://" in one:
        raise ValueError(f"{one!r}: a coordinator URL is http://, https:// or host:port")
    return Endpoint(one, False)
