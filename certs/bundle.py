"""Trust bundles: files of one or more CA certificates, and chain checks against them.

During CA rotation a TLS directory's `ca.crt` holds both the old and the new mesh CA, so peers
with certificates from either are accepted. `add_to_bundle` appends without duplicating;
`verify_chain` is the CLI's preflight (TLS verifies for real at runtime) and explains exactly
why a certificate would be refused: unknown issuer, bad signature, or outside its validity.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs.clock import resolve_now
from certs.errors import CertFileError, ChainError
from certs.pemfiles import (
    PUBLIC_MODE,
    certificate_pem,
    read_certificate,
    read_certificates,
    write_file,
)


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """True when `cert` has basicConstraints CA=true."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def load_bundle(path: Path) -> list[x509.Certificate]:
    """Read a trust bundle: one or more concatenated PEM CA certificates."""
    certs = read_certificates(path, what="trust bundle")
    for index, cert in enumerate(certs, start=1):
        if not is_ca_certificate(cert):
            raise CertFileError(
                f"trust bundle {path}: certificate {index} ({_subject(cert)!r}) is not a CA "
                "certificate"
            )
    return certs


def add_to_bundle(*, bundle: Path, ca_cert: Path) -> int:
    """Append the CA certificate(s) in `ca_cert` to `bundle`, skipping ones already there.

    Creates `bundle` when it does not exist. Returns how many certificates were added (0 when
    all were present already).
    """
    new = read_certificates(ca_cert, what="CA certificate")
    for cert in new:
        if not is_ca_certificate(cert):
            raise CertFileError(f"{ca_cert}: {_subject(cert)!r} is not a CA certificate")
    existing = load_bundle(bundle) if bundle.exists() else []
    merged = list(existing)
    for cert in new:
        if cert not in merged:
            merged.append(cert)
    added = len(merged) - len(existing)
    if added:
        data = b"".join(certificate_pem(cert) for cert in merged)
        write_file(bundle, data, mode=PUBLIC_MODE, overwrite=True)
    return added


def _check_validity(cert: x509.Certificate, *, what: str, now: datetime) -> None:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        raise ChainError(
            f"{what} {_subject(cert)!r} is not valid before {not_before.isoformat()} "
            f"(now {now.isoformat()})"
        )
    if now >= not_after:
        raise ChainError(
            f"{what} {_subject(cert)!r} expired at {not_after.isoformat()} (now {now.isoformat()})"
        )


def _signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    *,
    leaf: x509.Certificate | Path,
    bundle: Sequence[x509.Certificate] | Path,
    now: datetime | None = None,
) -> x509.Certificate:
    """Check that `leaf` is signed by a CA in `bundle` and that both are valid at `now`.

    Returns the issuing CA certificate; raises `ChainError` naming the reason otherwise.
    """
    now = resolve_now(now)
    leaf_cert = read_certificate(leaf) if isinstance(leaf, Path) else leaf
    cas = load_bundle(bundle) if isinstance(bundle, Path) else list(bundle)
    if not cas:
        raise ChainError("the trust bundle holds no CA certificate")
    named = [ca for ca in cas if ca.subject == leaf_cert.issuer and is_ca_certificate(ca)]
    if not named:
        known = "; ".join(repr(_subject(ca)) for ca in cas)
        raise ChainError(
            f"certificate {_subject(leaf_cert)!r} was issued by "
            f"{leaf_cert.issuer.rfc4514_string()!r}, which is not in the trust bundle "
            f"(it holds {known})"
        )
    issuer = next((ca for ca in named if _signed_by(leaf_cert, ca)), None)
    if issuer is None:
        raise ChainError(
            f"certificate {_subject(leaf_cert)!r} names issuer "
            f"{leaf_cert.issuer.rfc4514_string()!r}, but its signature does not verify with "
            "the key of any CA of that name in the trust bundle"
        )
    _check_validity(leaf_cert, what="certificate", now=now)
    _check_validity(issuer, what="issuing CA", now=now)
    return issuer
