"""The on-disk layout of a CA directory and a TLS directory (a contract; see `certs`).

Other parts (meshapi, nodeagent, deploy's Secrets) load these exact file names, so they live in
one place. A TLS directory's `ca.crt` is a trust bundle and may hold several CA certificates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
BUNDLE_FILE = "ca.crt"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"


@dataclass(frozen=True)
class CaFiles:
    """The files of a CA directory."""

    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> CaFiles:
        return cls(cert=directory / CA_CERT_FILE, key=directory / CA_KEY_FILE)


@dataclass(frozen=True)
class TlsFiles:
    """The files a TLS server or client loads: trust bundle, leaf certificate, leaf key."""

    bundle: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        return cls(
            bundle=directory / BUNDLE_FILE,
            cert=directory / TLS_CERT_FILE,
            key=directory / TLS_KEY_FILE,
        )
