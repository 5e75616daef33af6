"""Certificates that never touch a disk: a CA loaded from PEM bytes, leaves issued as PEM bytes.

`meshctl install` issues a cell's certificates straight into Kubernetes Secrets. With
`--ca-from-context` the mesh CA's key is read from another cluster's Secret into this process
only, so nothing here writes a file: `ca_from_pem` checks the pair like `load_ca`, `issue_pem`
signs with the same `sign_leaf` as `issue_certificate`, and `reissue_reason` tells whether an
existing certificate (say, in a Secret) may be kept: right identity and SANs, signed by this CA,
key matching, and far enough from expiry. Pure crypto on bytes; the caller does the IO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs.authority import CertificateAuthority, check_leaf_request, checked_ca, sign_leaf
from certs.bundle import verify_chain
from certs.clock import resolve_now
from certs.errors import CertError
from certs.identity import Role, identity_from_certificate
from certs.inspection import subject_alt_names
from certs.names import (
    validate_dns_name,
    validate_ip_address,
)
from certs.pemfiles import (
    certificate_pem,
    parse_certificate,
    parse_certificates,
    parse_ec_private_key,
    private_key_pem,
)

__all__ = ["PemPair", "ca_certificate_pem", "ca_from_pem", "issue_pem", "reissue_reason"]


@dataclass(frozen=True)
class PemPair:
    """A leaf certificate and its private key, PEM (the key PKCS8, unencrypted)."""

    cert: bytes
    key: bytes


def ca_from_pem(cert_pem: bytes, key_pem: bytes, *, source: str) -> CertificateAuthority:
    """The CA whose certificate and key are given (``source`` names where they came from)."""
    cert = parse_certificate(cert_pem, source=f"{source} ca.crt")
    key = parse_ec_private_key(key_pem, source=f"{source} ca.key")
    return checked_ca(cert, key, cert_source=f"{source} ca.crt", key_source=f"{source} ca.key")


def ca_certificate_pem(ca: CertificateAuthority) -> bytes:
    """The CA certificate as PEM: the ``ca.crt`` trust bundle of the certificates it issues."""
    return certificate_pem(ca.cert)


def issue_pem(
    ca: CertificateAuthority,
    *,
    cell: str,
    role: Role,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 365,
    node: str | None = None,
    now: datetime | None = None,
    ca_source: str = "the CA",
) -> PemPair:
    """Issue ``spiffe://<td>/cell/<cell>/<role>`` like ``issue_certificate``, into memory."""
    role = check_leaf_request(cell=cell, role=role, node=node, days=days)
    cert, key = sign_leaf(
        ca,
        ca_source=ca_source,
        cell=cell,
        role=role,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        days=days,
        node=node,
        now=resolve_now(now),
    )
    return PemPair(cert=certificate_pem(cert), key=private_key_pem(key))


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def reissue_reason(
    ca: CertificateAuthority,
    *,
    cert_pem: bytes,
    key_pem: bytes,
    bundle_pem: bytes,
    cell: str,
    role: Role,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    min_days_left: int = 30,
    now: datetime | None = None,
) -> str | None:
    """Why an existing certificate must be replaced, or ``None`` when it can be kept as is.

    Kept only when: ``key_pem`` is the key of ``cert_pem``; the certificate is this cell's
    ``role`` identity in ``ca``'s trust domain; ``ca`` signed it and it is valid now and for at
    least ``min_days_left`` more days; a meshapi certificate has exactly the wanted SANs; and
    ``bundle_pem`` trusts ``ca``.
    """
    now = resolve_now(now)
    try:
        cert = parse_certificate(cert_pem, source="tls.crt")
        key = parse_ec_private_key(key_pem, source="tls.key")
        bundle = parse_certificates(bundle_pem, source="ca.crt")
    except CertError as e:
        return str(e)
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        return "tls.key is not the private key of tls.crt"
    try:
        identity = identity_from_certificate(cert, trust_domain=ca.trust_domain)
        verify_chain(leaf=cert, bundle=[ca.cert], now=now)
    except CertError as e:
        return str(e)
    if identity.cell != cell or identity.role is not role:
        return f"it is {identity.spiffe_id}, not cell {cell} role {role.value}"
    if cert.not_valid_after_utc - now < timedelta(days=min_days_left):
        return f"it expires at {cert.not_valid_after_utc.isoformat()} (< {min_days_left} days)"
    if role is Role.MESHAPI:
        want_dns = {validate_dns_name(n).lower() for n in dns_names}
        want_ips = {str(validate_ip_address(a)) for a in ip_addresses}
        dns, ips = subject_alt_names(cert)
        if ({name.lower() for name in dns}, set(ips)) != (want_dns, want_ips):
            return "its DNS/IP SANs differ from the wanted ones"
    ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
    if not any(c.public_bytes(serialization.Encoding.DER) == ca_der for c in bundle):
        return "its ca.crt does not hold this CA"
    return None
