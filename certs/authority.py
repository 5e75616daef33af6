"""The mesh CA: create it once per mesh, then issue every cell's certificates from it.

`create_ca` writes a CA directory (`ca.crt`, `ca.key`) whose certificate names the trust domain
in a `spiffe://<trust-domain>` URI SAN, so `issue_certificate` reads the trust domain from the
CA and nobody repeats it. `issue_certificate` writes a TLS directory (`ca.crt` bundle, `tls.crt`,
`tls.key`) for one identity `spiffe://<td>/cell/<cell>/<role>`. Keys are ECDSA P-256, signatures
SHA-256. A leaf never outlives its CA: its not-after is clipped to the CA's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.bundle import add_to_bundle, is_ca_certificate
from certs.clock import resolve_now
from certs.errors import AlreadyExistsError, CertError, CertFileError, CertInputError
from certs.identity import Role, leaf_common_name, spiffe_id, trust_domain_id, trust_domain_of_ca
from certs.layout import CaFiles, TlsFiles
from certs.names import (
    validate_cell_name,
    validate_dns_name,
    validate_ip_address,
    validate_node_name,
    validate_trust_domain,
)
from certs.pemfiles import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    certificate_pem,
    ensure_directory,
    private_key_pem,
    read_certificate,
    read_ec_private_key,
    write_file,
)

CLOCK_SKEW = timedelta(minutes=5)
"""Certificates are valid from a little before `now`, so a peer whose clock lags still accepts."""

DEFAULT_SERVER_DNS_NAMES = ("localhost",)
DEFAULT_SERVER_IP_ADDRESSES = ("127.0.0.1",)

MAX_DAYS = 36500
"""A hundred years: far beyond any sane lifetime, and still a representable date."""

_ORGANIZATION = "cellmesh"


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded mesh CA: its certificate, private key and trust domain."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str


def _check_days(days: int) -> None:
    if days < 1:
        raise CertInputError(f"validity of {days} days is too short; give at least 1 day")
    if days > MAX_DAYS:
        raise CertInputError(f"validity of {days} days is too long; at most {MAX_DAYS} allowed")


def check_leaf_request(*, cell: str, role: Role | str, node: str | None, days: int) -> Role:
    """The checks of a leaf request before anything is signed (on disk or in memory): a known
    role, a valid cell name, a node only on an agent certificate, a validity in range."""
    try:
        role = Role(role)
    except ValueError as e:
        known = ", ".join(r.value for r in Role)
        raise CertInputError(f"unknown role {role!r}; known roles: {known}") from e
    validate_cell_name(cell)
    if node is not None:
        if role is not Role.AGENT:
            raise CertInputError(
                f"a node name binds an agent certificate to its node; {role.value} "
                "certificates cannot have one"
            )
        validate_node_name(node)
    _check_days(days)
    return role


def create_ca(
    *, trust_domain: str, out_dir: Path, days: int = 3650, now: datetime | None = None
) -> Path:
    """Create a mesh CA in `out_dir` and return the path of its certificate (`ca.crt`).

    Refuses to touch a directory that already holds a CA: a new key would orphan every
    certificate the old one issued.
    """
    validate_trust_domain(trust_domain)
    _check_days(days)
    now = resolve_now(now)
    files = CaFiles.in_dir(out_dir)
    existing = [p.name for p in (files.cert, files.key) if p.exists()]
    if existing:
        raise AlreadyExistsError(
            f"{out_dir} already holds a CA ({', '.join(existing)}); refusing to overwrite it"
        )
    ensure_directory(out_dir, mode=0o700)

    key = ec.generate_private_key(ec.SECP256R1())
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # A per-key CN keeps subjects distinct across rotations, so a bundle with old and new CA
    # never holds two CAs of the same name.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"cellmesh CA {key_id.digest.hex()[:16]}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(key_id, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(trust_domain_id(trust_domain))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    write_file(files.key, private_key_pem(key), mode=PRIVATE_MODE, overwrite=False)
    try:
        write_file(files.cert, certificate_pem(cert), mode=PUBLIC_MODE, overwrite=False)
    except CertError:
        files.key.unlink()  # never leave a key without its certificate
        raise
    return files.cert


def load_ca(ca_dir: Path) -> CertificateAuthority:
    """Load the CA in `ca_dir` and check that key, certificate and trust domain belong together."""
    files = CaFiles.in_dir(ca_dir)
    cert = read_certificate(files.cert, what="CA certificate")
    key = read_ec_private_key(files.key)
    return checked_ca(cert, key, cert_source=str(files.cert), key_source=str(files.key))


def checked_ca(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, *, cert_source: str, key_source: str
) -> CertificateAuthority:
    """A CA from a loaded certificate and key, checked to belong together (sources: for errors)."""
    if not is_ca_certificate(cert):
        raise CertFileError(f"{cert_source} is not a CA certificate (basicConstraints CA=false)")
    if _public_key_der(key.public_key()) != _public_key_der(cert.public_key()):
        raise CertFileError(f"{key_source} is not the private key of {cert_source}")
    try:
        trust_domain = trust_domain_of_ca(cert)
    except CertError as e:
        raise CertFileError(f"{cert_source}: {e}") from e
    return CertificateAuthority(cert=cert, key=key, trust_domain=trust_domain)


def _public_key_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject_alt_names(
    *, uri: str, role: Role, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> x509.SubjectAlternativeName:
    if role is not Role.MESHAPI and (dns_names or ip_addresses):
        raise CertInputError(
            f"DNS and IP SANs are for meshapi (server) certificates; {role.value} "
            "certificates are client certificates and carry only their SPIFFE ID"
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    if role is Role.MESHAPI:
        if not dns_names and not ip_addresses:
            dns_names, ip_addresses = DEFAULT_SERVER_DNS_NAMES, DEFAULT_SERVER_IP_ADDRESSES
        # dict.fromkeys: drop duplicates, keep the order the operator gave.
        names += [x509.DNSName(n) for n in dict.fromkeys(map(validate_dns_name, dns_names))]
        names += [x509.IPAddress(a) for a in dict.fromkeys(map(validate_ip_address, ip_addresses))]
    return x509.SubjectAlternativeName(names)


def _leaf_validity(
    ca: CertificateAuthority, *, ca_dir: Path | str, now: datetime, days: int
) -> tuple[datetime, datetime]:
    ca_start, ca_end = ca.cert.not_valid_before_utc, ca.cert.not_valid_after_utc
    if now >= ca_end:
        raise CertFileError(
            f"the CA in {ca_dir} expired at {ca_end.isoformat()}; it cannot issue certificates "
            "(create a new CA and rotate)"
        )
    if now < ca_start:
        raise CertFileError(f"the CA in {ca_dir} is not valid before {ca_start.isoformat()}")
    return max(now - CLOCK_SKEW, ca_start), min(now + timedelta(days=days), ca_end)


def _authority_key_identifier(ca: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue_certificate(
    *,
    ca_dir: Path,
    cell: str,
    role: Role,
    out_dir: Path,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 365,
    node: str | None = None,
    now: datetime | None = None,
    overwrite: bool = False,
) -> Path:
    """Issue a certificate for `spiffe://<td>/cell/<cell>/<role>` into `out_dir`.

    Writes `tls.key`, `tls.crt` (the leaf alone) and adds the CA to the `ca.crt` bundle (created
    if missing, never duplicated, other CAs kept). Returns the path of `tls.crt`. `meshapi`
    certificates are server and client certificates with DNS/IP SANs (default `localhost` and
    `127.0.0.1`); the other roles are client-only. `node` binds an agent certificate to a node.
    An existing `tls.crt`/`tls.key` is replaced only with `overwrite`. The not-after is clipped
    to the CA's.
    """
    role = check_leaf_request(cell=cell, role=role, node=node, days=days)
    now = resolve_now(now)
    ca = load_ca(ca_dir)
    cert, key = sign_leaf(
        ca,
        ca_source=ca_dir,
        cell=cell,
        role=role,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        days=days,
        node=node,
        now=now,
    )
    files = TlsFiles.in_dir(out_dir)
    if not overwrite:
        existing = [p.name for p in (files.cert, files.key) if p.exists()]
        if existing:
            raise AlreadyExistsError(
                f"{out_dir} already holds {', '.join(existing)}; refusing to overwrite "
                "(pass overwrite=True / --force to replace)"
            )
    ensure_directory(out_dir)
    write_file(files.key, private_key_pem(key), mode=PRIVATE_MODE, overwrite=overwrite)
    write_file(files.cert, certificate_pem(cert), mode=PUBLIC_MODE, overwrite=overwrite)
    add_to_bundle(bundle=files.bundle, ca_cert=CaFiles.in_dir(ca_dir).cert)
    return files.cert


def sign_leaf(
    ca: CertificateAuthority,
    *,
    ca_source: Path | str,
    cell: str,
    role: Role,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    days: int,
    node: str | None,
    now: datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Make a new key and its leaf certificate signed by `ca` (inputs already validated).

    `issue_certificate` writes the result to a TLS directory; `certs.memory` keeps it in memory.
    """
    uri = spiffe_id(trust_domain=ca.trust_domain, cell=cell, role=role)
    sans = _subject_alt_names(uri=uri, role=role, dns_names=dns_names, ip_addresses=ip_addresses)
    not_before, not_after = _leaf_validity(ca, ca_dir=ca_source, now=now, days=days)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role is Role.MESHAPI:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, leaf_common_name(cell=cell, role=role, node=node))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
        .add_extension(sans, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key
