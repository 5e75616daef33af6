"""inspect_certificate and expiry_report, with the clock held still."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certs import (
    CertFileError,
    CertificateAuthority,
    ExpiryStatus,
    Role,
    add_to_bundle,
    expiry_report,
    inspect_certificate,
    issue_certificate,
)

from .conftest import NOW, TRUST_DOMAIN, build_leaf


def test_inspect_agent_certificate(ca_dir: Path, tmp_path: Path) -> None:
    cert_path = issue_certificate(
        ca_dir=ca_dir,
        cell="cell-a",
        role=Role.AGENT,
        out_dir=tmp_path / "agent",
        node="node-1",
        days=90,
        now=NOW,
    )

    info = inspect_certificate(cert_path, now=NOW)

    assert info.path == cert_path
    assert info.subject == "CN=node-1"
    assert info.spiffe_id == f"spiffe://{TRUST_DOMAIN}/cell/cell-a/agent"
    assert info.uris == (info.spiffe_id,)
    assert (info.trust_domain, info.cell, info.role, info.node) == (
        TRUST_DOMAIN,
        "cell-a",
        Role.AGENT,
        "node-1",
    )
    assert info.not_after == NOW + timedelta(days=90)
    assert info.days_left == 90
    assert info.status is ExpiryStatus.OK
    assert not info.is_ca
    assert info.identity_error is None
    assert len(info.sha256_fingerprint) == 64


def test_inspect_meshapi_certificate_shows_sans(ca_dir: Path, tmp_path: Path) -> None:
    cert_path = issue_certificate(
        ca_dir=ca_dir,
        cell="cell-b",
        role=Role.MESHAPI,
        out_dir=tmp_path / "api",
        dns_names=["meshapi.cell-b"],
        ip_addresses=["192.0.2.10"],
        now=NOW,
    )

    info = inspect_certificate(cert_path, now=NOW)

    assert info.role is Role.MESHAPI
    assert info.subject == "CN=cell-b/meshapi"
    assert info.node is None
    assert info.dns_names == ("meshapi.cell-b",)
    assert info.ip_addresses == ("192.0.2.10",)


def test_inspect_ca_certificate(ca_dir: Path) -> None:
    info = inspect_certificate(ca_dir / "ca.crt", now=NOW)

    assert info.is_ca
    assert info.trust_domain == TRUST_DOMAIN
    assert info.spiffe_id == f"spiffe://{TRUST_DOMAIN}"
    assert (info.cell, info.role, info.node) == (None, None, None)
    assert info.identity_error is None
    assert info.days_left == 3650


def test_inspect_reads_der(ca: CertificateAuthority, tmp_path: Path) -> None:
    path = tmp_path / "leaf.der"
    leaf = build_leaf(ca, uris=[f"spiffe://{TRUST_DOMAIN}/cell/a/peer"])
    path.write_bytes(leaf.public_bytes(Encoding.DER))

    assert inspect_certificate(path, now=NOW).role is Role.PEER


def test_inspect_shows_why_a_leaf_is_not_a_mesh_identity(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    path = tmp_path / "leaf.crt"
    path.write_bytes(build_leaf(ca, uris=[]).public_bytes(Encoding.PEM))

    info = inspect_certificate(path, now=NOW)

    assert info.spiffe_id is None
    assert info.role is None
    assert info.identity_error is not None
    assert "no SPIFFE URI SAN" in info.identity_error


@pytest.mark.parametrize(
    ("offset", "days_left", "status"),
    [
        pytest.param(timedelta(0), 90, ExpiryStatus.OK, id="fresh"),
        pytest.param(timedelta(days=60), 30, ExpiryStatus.OK, id="exactly-warn-days-left"),
        pytest.param(timedelta(days=60, hours=1), 29, ExpiryStatus.EXPIRING, id="expiring"),
        pytest.param(timedelta(days=90), 0, ExpiryStatus.EXPIRED, id="expires-now"),
        pytest.param(timedelta(days=90, seconds=1), -1, ExpiryStatus.EXPIRED, id="just-expired"),
        pytest.param(timedelta(days=100), -10, ExpiryStatus.EXPIRED, id="long-expired"),
    ],
)
def test_days_left_and_status(
    ca_dir: Path, tmp_path: Path, offset: timedelta, days_left: int, status: ExpiryStatus
) -> None:
    cert_path = issue_certificate(
        ca_dir=ca_dir, cell="a", role=Role.PEER, out_dir=tmp_path / "peer", days=90, now=NOW
    )

    info = inspect_certificate(cert_path, now=NOW + offset)

    assert (info.days_left, info.status) == (days_left, status)


def test_expiry_report_covers_every_certificate(
    ca_dir: Path, other_ca_dir: Path, tmp_path: Path
) -> None:
    leaf = issue_certificate(
        ca_dir=ca_dir, cell="a", role=Role.ADMIN, out_dir=tmp_path / "admin", days=20, now=NOW
    )
    bundle = tmp_path / "admin" / "ca.crt"
    add_to_bundle(bundle=bundle, ca_cert=other_ca_dir / "ca.crt")

    report = expiry_report([leaf, bundle], now=NOW, warn_days=30)

    assert [(e.path, e.days_left, e.status) for e in report] == [
        (leaf, 20, ExpiryStatus.EXPIRING),
        (bundle, 3650, ExpiryStatus.OK),
        (bundle, 3650, ExpiryStatus.OK),
    ]
    assert report[0].subject == "CN=a/admin"


def test_expiry_report_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CertFileError, match=re.escape("missing.crt does not exist")):
        expiry_report([tmp_path / "missing.crt"], now=NOW)
