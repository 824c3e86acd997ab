"""The optional TCP port for remote schedulers: mutual TLS, or plain loopback by name.

Plain TCP is never the result of an omission: a TCP address without the three
TLS files is refused at start unless ``insecure_loopback`` is set, and that
flag only works on a loopback address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

from snapd_daemon.errors import ConfigInvalid


@dataclass(frozen=True)
class TcpListen:
    address: str
    # PEM files: the server's certificate chain and key, and the CA that signs client certificates.
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    # Plain TCP, loopback only, for tests and local tools: any local user can then call the API.
    insecure_loopback: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.cert or self.key or self.client_ca)

    def check(self) -> None:
        """Raise ConfigInvalid unless this is complete mutual TLS, or plain loopback asked for by name."""
        if self.tls and self.insecure_loopback:
            raise ConfigInvalid(source="tcp", reason="TLS files and insecure_loopback_tcp exclude each other")
        if self.tls:
            missing = [n for n, v in (("tls_cert", self.cert), ("tls_key", self.key),
                                      ("tls_client_ca", self.client_ca)) if not v]
            if missing:
                raise ConfigInvalid(source="tcp", reason=f"mutual TLS needs tls_cert, tls_key and tls_client_ca; "
                                    f"missing {', '.join(missing)}")
            return
        if not self.insecure_loopback:
            raise ConfigInvalid(
                source="tcp",
                reason=f"{self.address} would be served without authentication; give --tls-cert, --tls-key and "
                "--tls-client-ca (mutual TLS), or --insecure-loopback-tcp for plain TCP on a loopback address",
            )
        host = self.address.rpartition(":")[0].strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigInvalid(
                source="tcp",
                reason=f"{self.address} is not a loopback address; plain TCP is only served on 127.0.0.0/8 or [::1]",
            )

    def add_to(self, server: grpc.Server) -> None:
        """Open the port on ``server`` (call ``check`` first)."""
        if not self.tls:
            server.add_insecure_port(self.address)
            return
        assert self.cert and self.key and self.client_ca
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            ca = self.client_ca.read_bytes()
        except OSError as exc:
            raise ConfigInvalid(source="tcp", reason=f"cannot read {exc.filename}: {exc.strerror}") from exc
        server.add_secure_port(
            self.address, grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)
        )
