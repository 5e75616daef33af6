"""``certs.memory``: a CA from PEM bytes, leaves issued into memory, and when to keep a leaf."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from certs import CA_CERT_FILE, CA_KEY_FILE, CertFileError, Role, create_ca, load_ca
from certs.memory import PemPair, ca_certificate_pem, ca_from_pem, issue_pem, reissue_reason
from certs.pemfiles import parse_certificate
from tests.certs.conftest import NOW, TRUST_DOMAIN

DNS = ("cellmesh-meshapi.cellmesh.svc", "localhost")
IPS = ("127.0.0.1",)


def test_ca_from_pem_checks_the_pair(ca_dir: Path, tmp_path: Path) -> None:
    cert, key = (ca_dir / CA_CERT_FILE).read_bytes(), (ca_dir / CA_KEY_FILE).read_bytes()
    assert ca_from_pem(cert, key, source="Secret x").trust_domain == TRUST_DOMAIN
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=tmp_path / "other", now=NOW)
    other_key = (tmp_path / "other" / CA_KEY_FILE).read_bytes()
    with pytest.raises(CertFileError, match=r"Secret x ca\.key is not the private key of"):
        ca_from_pem(cert, other_key, source="Secret x")
    with pytest.raises(CertFileError, match=r"Secret x ca\.key: not an unencrypted PEM"):
        ca_from_pem(cert, b"garbage", source="Secret x")


def test_issue_pem_matches_issue_certificate(ca_dir: Path) -> None:
    ca = load_ca(ca_dir)
    pair = issue_pem(ca, cell="cell-1", role=Role.MESHAPI, dns_names=DNS, ip_addresses=IPS, now=NOW)
    cert = parse_certificate(pair.cert, source="leaf")
    assert cert.issuer == ca.cert.subject
    assert b"PRIVATE KEY" in pair.key
    assert ca_certificate_pem(ca).startswith(b"-----BEGIN CERTIFICATE")


def _keep(ca_dir: Path, pair: PemPair, **overrides: object) -> str | None:
    ca = load_ca(ca_dir)
    args: dict[str, object] = {
        "cert_pem": pair.cert,
        "key_pem": pair.key,
        "bundle_pem": ca_certificate_pem(ca),
        "cell": "cell-1",
        "role": Role.MESHAPI,
        "dns_names": DNS,
        "ip_addresses": IPS,
        "min_days_left": 30,
        "now": NOW,
    }
    args.update(overrides)
    return reissue_reason(ca, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({}, None, id="kept"),
        pytest.param({"cell": "cell-2"}, "not cell cell-2 role meshapi", id="other-cell"),
        pytest.param({"role": Role.AGENT}, "not cell cell-1 role agent", id="other-role"),
        pytest.param({"dns_names": ("localhost",)}, "SANs differ", id="other-sans"),
        pytest.param({"now": NOW + timedelta(days=340)}, "expires at", id="near-expiry"),
        pytest.param({"now": NOW + timedelta(days=400)}, "expired", id="expired"),
        pytest.param({"bundle_pem": b""}, "ca.crt", id="no-bundle"),
        pytest.param({"key_pem": b"junk"}, "tls.key: not an unencrypted PEM", id="bad-key"),
    ],
)
def test_reissue_reason(ca_dir: Path, overrides: dict[str, object], reason: str | None) -> None:
    pair = issue_pem(
        load_ca(ca_dir), cell="cell-1", role=Role.MESHAPI, dns_names=DNS, ip_addresses=IPS, now=NOW
    )
    got = _keep(ca_dir, pair, **overrides)
    if reason is None:
        assert got is None
    else:
        assert got is not None
        assert reason in got


def test_reissue_reason_refuses_another_key_or_ca(ca_dir: Path, tmp_path: Path) -> None:
    ca = load_ca(ca_dir)
    pair = issue_pem(ca, cell="cell-1", role=Role.MESHAPI, dns_names=DNS, ip_addresses=IPS, now=NOW)
    other = issue_pem(
        ca, cell="cell-1", role=Role.MESHAPI, dns_names=DNS, ip_addresses=IPS, now=NOW
    )
    assert (
        _keep(ca_dir, replace(pair, key=other.key)) == "tls.key is not the private key of tls.crt"
    )
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=tmp_path / "foreign", now=NOW)
    foreign = issue_pem(
        load_ca(tmp_path / "foreign"),
        cell="cell-1",
        role=Role.MESHAPI,
        dns_names=DNS,
        ip_addresses=IPS,
        now=NOW,
    )
    got = _keep(ca_dir, foreign)
    assert got is not None
    assert "not in the trust bundle" in got
