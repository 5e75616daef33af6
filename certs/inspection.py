"""Reading certificates back: what a file holds, whose identity it is, and when it expires.

`inspect_certificate` turns a certificate file into a `CertificateInfo` value that `meshctl certs
inspect` prints (as a table or as stable JSON); `expiry_report` checks many files at once for
`meshctl status`. Unlike `identity_from_certificate`, inspection never refuses a certificate:
a leaf that is not a mesh identity is shown with the reason in `identity_error`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs.bundle import is_ca_certificate
from certs.clock import resolve_now
from certs.errors import IdentityError
from certs.identity import (
    SPIFFE_SCHEME,
    MeshIdentity,
    Role,
    identity_from_certificate,
    trust_domain_of_ca,
    uri_sans,
)
from certs.pemfiles import read_certificate, read_certificates

DEFAULT_WARN_DAYS = 30


class ExpiryStatus(StrEnum):
    OK = "ok"
    EXPIRING = "expiring"  # fewer than `warn_days` days left
    EXPIRED = "expired"


def days_left(not_after: datetime, *, now: datetime) -> int:
    """Whole days until `not_after`, rounded down; negative once expired."""
    return (not_after - now) // timedelta(days=1)


def expiry_status(not_after: datetime, *, now: datetime, warn_days: int) -> ExpiryStatus:
    if now >= not_after:
        return ExpiryStatus.EXPIRED
    if not_after - now < timedelta(days=warn_days):
        return ExpiryStatus.EXPIRING
    return ExpiryStatus.OK


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class CertificateInfo:
    """Everything an operator wants to know about one certificate."""

    path: Path
    subject: str
    issuer: str
    serial: int
    sha256_fingerprint: str
    is_ca: bool
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    uris: tuple[str, ...]
    spiffe_id: str | None
    trust_domain: str | None
    cell: str | None
    role: Role | None
    node: str | None
    not_before: datetime
    not_after: datetime
    days_left: int
    status: ExpiryStatus
    identity_error: str | None = None

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict with a stable set of keys (the `-o json` contract)."""
        return {
            "path": str(self.path),
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": f"{self.serial:x}",
            "sha256_fingerprint": self.sha256_fingerprint,
            "is_ca": self.is_ca,
            "spiffe_id": self.spiffe_id,
            "trust_domain": self.trust_domain,
            "cell": self.cell,
            "role": None if self.role is None else self.role.value,
            "node": self.node,
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
            "uris": list(self.uris),
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "days_left": self.days_left,
            "status": self.status.value,
            "identity_error": self.identity_error,
        }


def subject_alt_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The certificate's DNS names and IP addresses (as strings), in its order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    dns = tuple(san.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return dns, ips


def describe_certificate(
    cert: x509.Certificate,
    *,
    path: Path,
    now: datetime | None = None,
    warn_days: int = DEFAULT_WARN_DAYS,
) -> CertificateInfo:
    """Describe an already loaded certificate; `path` is only recorded."""
    now = resolve_now(now)
    uris = tuple(uri_sans(cert))
    dns_names, ip_addresses = subject_alt_names(cert)
    is_ca = is_ca_certificate(cert)
    spiffe = next((u for u in uris if u.startswith(SPIFFE_SCHEME)), None)
    trust_domain: str | None = None
    identity: MeshIdentity | None = None
    problem: str | None = None
    try:
        if is_ca:
            trust_domain = trust_domain_of_ca(cert)
        else:
            identity = identity_from_certificate(cert)
            trust_domain = identity.trust_domain
    except IdentityError as e:
        problem = str(e)
    return CertificateInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        sha256_fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        is_ca=is_ca,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        uris=uris,
        spiffe_id=spiffe,
        trust_domain=trust_domain,
        cell=None if identity is None else identity.cell,
        role=None if identity is None else identity.role,
        node=None if identity is None else identity.node,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        days_left=days_left(cert.not_valid_after_utc, now=now),
        status=expiry_status(cert.not_valid_after_utc, now=now, warn_days=warn_days),
        identity_error=problem,
    )


def inspect_certificate(
    path: Path, *, now: datetime | None = None, warn_days: int = DEFAULT_WARN_DAYS
) -> CertificateInfo:
    """Describe the certificate in `path` (PEM or DER; of a bundle, the first certificate)."""
    return describe_certificate(read_certificate(path), path=path, now=now, warn_days=warn_days)


@dataclass(frozen=True)
class ExpiryEntry:
    """One certificate's line in an expiry report."""

    path: Path
    subject: str
    not_after: datetime
    days_left: int
    status: ExpiryStatus


def expiry_report(
    paths: Iterable[Path], *, now: datetime | None = None, warn_days: int = DEFAULT_WARN_DAYS
) -> list[ExpiryEntry]:
    """Check when every certificate in `paths` expires; a bundle gives one entry per CA.

    Raises `CertFileError` for a file that is missing or holds no certificate.
    """
    now = resolve_now(now)
    return [
        ExpiryEntry(
            path=path,
            subject=cert.subject.rfc4514_string(),
            not_after=cert.not_valid_after_utc,
            days_left=days_left(cert.not_valid_after_utc, now=now),
            status=expiry_status(cert.not_valid_after_utc, now=now, warn_days=warn_days),
        )
        for path in paths
        for cert in read_certificates(path)
    ]
