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

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs.authority import CertificateAuthority, checked_ca, sign_leaf
from certs.bundle import verify_chain
from certs.clock import resolve_now
from certs.errors import CertError, CertFileError, CertInputError
from certs.identity import Role, identity_from_certificate
from certs.names import (
    validate_cell_name,
    validate_dns_name,
    validate_ip_address,
    validate_node_name,
)
from certs.pemfiles import certificate_pem, parse_certificate, parse_certificates, private_key_pem

__all__ = ["PemPair", "ca_certificate_pem", "ca_from_pem", "issue_pem", "reissue_reason"]


@dataclass(frozen=True)
class PemPair:
    """A leaf certificate and its private key, PEM (the key PKCS8, unencrypted)."""

    cert: bytes
    key: bytes


def _parse_ec_key(data: bytes, *, source: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise CertFileError(f"{source}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertFileError(f"{source}: expected an EC private key, found {type(key).__name__}")
    return key


def ca_from_pem(cert_pem: bytes, key_pem: bytes, *, source: str) -> CertificateAuthority:
    """The CA whose certificate and key are given (``source`` names where they came from)."""
    cert = parse_certificate(cert_pem, source=f"{source} ca.crt")
    key = _parse_ec_key(key_pem, source=f"{source} ca.key")
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
    validate_cell_name(cell)
    if node is not None:
        if role is not Role.AGENT:
            raise CertInputError(f"only agent certificates are bound to a node, not {role.value}")
        validate_node_name(node)
    if days < 1:
        raise CertInputError(f"validity of {days} days is too short; give at least 1 day")
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


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips


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
        key = _parse_ec_key(key_pem, source="tls.key")
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
        if _sans(cert) != (want_dns, want_ips):
            return "its DNS/IP SANs differ from the wanted ones"
    ca_der = ca.cert.public_bytes(serialization.Encoding.DER)
    if not any(c.public_bytes(serialization.Encoding.DER) == ca_der for c in bundle):
        return "its ca.crt does not hold this CA"
    return None
