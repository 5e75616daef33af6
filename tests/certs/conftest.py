"""Fixtures for the certs tests: a fixed clock, a real mesh CA, and forged leaves.

Every certificate here is real (ECDSA P-256, signed by a real CA on disk); `forge_leaf` builds
ones our issuer would never make (no URI SAN, two, odd paths) straight with `cryptography`, so
the identity checks are tested against what a misconfigured or hostile CA user could present.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs import CertificateAuthority, create_ca, load_ca

TRUST_DOMAIN = "mesh.example.org"
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

ForgeLeaf = Callable[..., x509.Certificate]


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=directory, now=NOW)
    return directory


@pytest.fixture
def ca(ca_dir: Path) -> CertificateAuthority:
    return load_ca(ca_dir)


@pytest.fixture
def other_ca_dir(tmp_path: Path) -> Path:
    """A second, unrelated CA of the same trust domain (another mesh, or the rotated CA)."""
    directory = tmp_path / "other-ca"
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=directory, now=NOW)
    return directory


def build_leaf(
    signer: CertificateAuthority,
    *,
    uris: Sequence[str],
    common_name: str = "forged",
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=30),
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(signer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return builder.sign(signer.key, hashes.SHA256())


@pytest.fixture
def forge_leaf(ca: CertificateAuthority) -> ForgeLeaf:
    """Build a leaf signed by the test CA with exactly the URI SANs and CN given."""

    return functools.partial(build_leaf, ca)
