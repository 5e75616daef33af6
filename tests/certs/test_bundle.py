"""Trust bundles and verify_chain: rotation with two CAs, and each reason to refuse."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs import (
    CertFileError,
    CertificateAuthority,
    ChainError,
    Role,
    add_to_bundle,
    issue_certificate,
    load_bundle,
    load_ca,
    verify_chain,
)

from .conftest import NOW, TRUST_DOMAIN, build_leaf


def _issue(ca_dir: Path, out: Path, *, days: int = 30) -> Path:
    return issue_certificate(
        ca_dir=ca_dir, cell="cell-a", role=Role.AGENT, out_dir=out, days=days, now=NOW
    )


def test_verify_chain_accepts_a_leaf_of_the_bundle(ca_dir: Path, tmp_path: Path) -> None:
    leaf = _issue(ca_dir, tmp_path / "agent")

    issuer = verify_chain(leaf=leaf, bundle=tmp_path / "agent" / "ca.crt", now=NOW)

    assert issuer == load_ca(ca_dir).cert


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        pytest.param(timedelta(days=31), "expired at", id="expired"),
        pytest.param(timedelta(days=30), "expired at", id="expired-exactly-at-not-after"),
        pytest.param(timedelta(hours=-1), "not valid before", id="not-yet-valid"),
    ],
)
def test_verify_chain_checks_time(
    ca_dir: Path, tmp_path: Path, offset: timedelta, message: str
) -> None:
    leaf = _issue(ca_dir, tmp_path / "agent", days=30)

    with pytest.raises(ChainError, match=re.escape(message)):
        verify_chain(leaf=leaf, bundle=tmp_path / "agent" / "ca.crt", now=NOW + offset)


def test_verify_chain_checks_the_ca_time(ca: CertificateAuthority) -> None:
    # A leaf that outlives its CA (not one we would issue) fails on the CA's expiry.
    ca_end = ca.cert.not_valid_after_utc
    leaf = build_leaf(
        ca,
        uris=[f"spiffe://{TRUST_DOMAIN}/cell/a/agent"],
        not_after=ca_end + timedelta(days=10),
    )

    with pytest.raises(ChainError, match=r"issuing CA .* expired"):
        verify_chain(leaf=leaf, bundle=[ca.cert], now=ca_end + timedelta(days=1))


def test_verify_chain_refuses_another_cas_leaf(
    ca_dir: Path, other_ca_dir: Path, tmp_path: Path
) -> None:
    leaf = _issue(other_ca_dir, tmp_path / "agent")

    with pytest.raises(ChainError, match="which is not in the trust bundle"):
        verify_chain(leaf=leaf, bundle=ca_dir / "ca.crt", now=NOW)


def test_verify_chain_refuses_an_impostor_ca_of_the_same_name(ca: CertificateAuthority) -> None:
    impostor = CertificateAuthority(
        cert=ca.cert, key=ec.generate_private_key(ec.SECP256R1()), trust_domain=TRUST_DOMAIN
    )
    leaf = build_leaf(impostor, uris=[f"spiffe://{TRUST_DOMAIN}/cell/a/admin"])

    with pytest.raises(ChainError, match="signature does not verify"):
        verify_chain(leaf=leaf, bundle=[ca.cert], now=NOW)


def test_verify_chain_refuses_an_empty_bundle(ca_dir: Path, tmp_path: Path) -> None:
    leaf = _issue(ca_dir, tmp_path / "agent")

    with pytest.raises(ChainError, match="holds no CA"):
        verify_chain(leaf=leaf, bundle=[], now=NOW)


def test_bundle_with_two_cas_accepts_leaves_of_both(
    ca_dir: Path, other_ca_dir: Path, tmp_path: Path
) -> None:
    old_leaf = _issue(ca_dir, tmp_path / "old")
    new_leaf = _issue(other_ca_dir, tmp_path / "new")
    bundle = tmp_path / "bundle.crt"

    assert add_to_bundle(bundle=bundle, ca_cert=ca_dir / "ca.crt") == 1
    assert add_to_bundle(bundle=bundle, ca_cert=other_ca_dir / "ca.crt") == 1

    assert verify_chain(leaf=old_leaf, bundle=bundle, now=NOW) == load_ca(ca_dir).cert
    assert verify_chain(leaf=new_leaf, bundle=bundle, now=NOW) == load_ca(other_ca_dir).cert


def test_add_to_bundle_never_duplicates(ca_dir: Path, other_ca_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.crt"
    add_to_bundle(bundle=bundle, ca_cert=ca_dir / "ca.crt")
    add_to_bundle(bundle=bundle, ca_cert=other_ca_dir / "ca.crt")
    before = bundle.read_bytes()

    assert add_to_bundle(bundle=bundle, ca_cert=ca_dir / "ca.crt") == 0
    assert add_to_bundle(bundle=bundle, ca_cert=bundle) == 0

    assert bundle.read_bytes() == before
    assert load_bundle(bundle) == [load_ca(ca_dir).cert, load_ca(other_ca_dir).cert]


def test_add_to_bundle_refuses_a_leaf(ca_dir: Path, tmp_path: Path) -> None:
    leaf = _issue(ca_dir, tmp_path / "agent")

    with pytest.raises(CertFileError, match="is not a CA certificate"):
        add_to_bundle(bundle=tmp_path / "bundle.crt", ca_cert=leaf)
    assert not (tmp_path / "bundle.crt").exists()


def test_load_bundle_refuses_a_leaf_inside(ca_dir: Path, tmp_path: Path) -> None:
    leaf = _issue(ca_dir, tmp_path / "agent")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((ca_dir / "ca.crt").read_bytes() + leaf.read_bytes())

    with pytest.raises(CertFileError, match=r"certificate 2 .* is not a CA certificate"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "does not exist", id="missing"),
        pytest.param(b"", "not a PEM or DER", id="empty"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\n!!\n", "not a PEM or DER", id="garbage"),
    ],
)
def test_load_bundle_names_the_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    bundle = tmp_path / "bundle.crt"
    if content is not None:
        bundle.write_bytes(content)

    with pytest.raises(CertFileError, match=re.escape(message)) as caught:
        load_bundle(bundle)
    assert str(bundle) in str(caught.value)
