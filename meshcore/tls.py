"""Load a TLS directory (`ca.crt` trust bundle, `tls.crt`, `tls.key`) into gRPC credentials.

The directory layout is the one `meshctl certs issue` writes. Servers always require a client
certificate; clients always present one (a TLS client without one makes grpc-core log a bad
certificate alert on every reconnect, so there is no such mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS directory is missing a file or holds something unreadable."""


@dataclass(frozen=True)
class TlsMaterial:
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_dir(cls, tls_dir: Path) -> TlsMaterial:
        parts: dict[str, bytes] = {}
        for name in ("ca.crt", "tls.crt", "tls.key"):
            path = tls_dir / name
            try:
                data = path.read_bytes()
            except OSError as e:
                raise TlsConfigError(f"{path}: {e.strerror or e}") from e
            if b"-----BEGIN" not in data:
                raise TlsConfigError(f"{path}: not a PEM file")
            parts[name] = data
        return cls(ca=parts["ca.crt"], cert=parts["tls.crt"], key=parts["tls.key"])


def server_credentials(tls_dir: Path) -> grpc.ServerCredentials:
    m = TlsMaterial.from_dir(tls_dir)
    return grpc.ssl_server_credentials(
        [(m.key, m.cert)], root_certificates=m.ca, require_client_auth=True
    )


def channel_credentials(tls_dir: Path) -> grpc.ChannelCredentials:
    m = TlsMaterial.from_dir(tls_dir)
    return grpc.ssl_channel_credentials(
        root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert
    )


def secure_channel(
    address: str, tls_dir: Path, *, server_name: str | None = None
) -> grpc.aio.Channel:
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, channel_credentials(tls_dir), options=options)
