"""create_ca and issue_certificate: the files, the extensions, and what they refuse."""

from __future__ import annotations

import ipaddress
import re
import stat
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import (
    AlreadyExistsError,
    CertFileError,
    CertInputError,
    Role,
    create_ca,
    issue_certificate,
    load_bundle,
    load_ca,
)
from certs.pemfiles import read_certificate

from .conftest import NOW, TRUST_DOMAIN


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> E:
    return cert.extensions.get_extension_for_class(kind).value


def test_create_ca_writes_cert_and_private_key(tmp_path: Path) -> None:
    out = tmp_path / "new-ca"
    cert_path = create_ca(trust_domain="mesh.local", out_dir=out, days=10, now=NOW)

    assert cert_path == out / "ca.crt"
    assert _mode(out / "ca.key") == 0o600
    assert _mode(out) == 0o700
    cert = read_certificate(cert_path)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage)
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert _ext(cert, x509.SubjectAlternativeName).get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["spiffe://mesh.local"]
    assert _ext(cert, x509.SubjectKeyIdentifier).digest
    assert cert.not_valid_after_utc == NOW + timedelta(days=10)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert load_ca(out).trust_domain == "mesh.local"


def test_create_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()

    with pytest.raises(AlreadyExistsError, match="already holds a CA"):
        create_ca(trust_domain=TRUST_DOMAIN, out_dir=ca_dir, now=NOW)

    assert (ca_dir / "ca.key").read_bytes() == before


def test_two_cas_have_distinct_subjects(ca_dir: Path, other_ca_dir: Path) -> None:
    # Rotation bundles hold old and new CA; distinct names keep chain building unambiguous.
    assert load_ca(ca_dir).cert.subject != load_ca(other_ca_dir).cert.subject


@pytest.mark.parametrize(
    ("trust_domain", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("Mesh.Local", "lowercase", id="uppercase"),
        pytest.param("mesh_local", "lowercase", id="underscore"),
        pytest.param("-mesh.local", "lowercase", id="leading-dash"),
        pytest.param("mesh..local", "lowercase", id="empty-label"),
        pytest.param("mesh.local/x", "lowercase", id="slash"),
        pytest.param("a" * 254, "at most 253", id="too-long"),
    ],
)
def test_create_ca_rejects_bad_trust_domain(
    tmp_path: Path, trust_domain: str, message: str
) -> None:
    with pytest.raises(CertInputError, match=re.escape(message)):
        create_ca(trust_domain=trust_domain, out_dir=tmp_path / "ca", now=NOW)
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize("role", list(Role), ids=[r.value for r in Role])
def test_issue_each_role(ca_dir: Path, tmp_path: Path, role: Role) -> None:
    out = tmp_path / role.value
    cert_path = issue_certificate(ca_dir=ca_dir, cell="cell-a", role=role, out_dir=out, now=NOW)

    assert cert_path == out / "tls.crt"
    assert _mode(out / "tls.key") == 0o600
    assert load_bundle(out / "ca.crt") == [load_ca(ca_dir).cert]
    cert = read_certificate(cert_path)
    assert len(x509.load_pem_x509_certificates(cert_path.read_bytes())) == 1
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{TRUST_DOMAIN}/cell/cell-a/{role.value}"
    ]
    assert not _ext(cert, x509.BasicConstraints).ca
    assert _ext(cert, x509.KeyUsage).digital_signature
    ca_cert = load_ca(ca_dir).cert
    assert _ext(cert, x509.AuthorityKeyIdentifier).key_identifier == (
        _ext(ca_cert, x509.SubjectKeyIdentifier).digest
    )
    assert cert.issuer == ca_cert.subject
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert cert.not_valid_before_utc < NOW
    eku = list(_ext(cert, x509.ExtendedKeyUsage))
    if role is Role.MESHAPI:
        assert eku == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    else:
        assert eku == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert san.get_values_for_type(x509.DNSName) == []


def test_issue_meshapi_with_given_sans(ca_dir: Path, tmp_path: Path) -> None:
    cert_path = issue_certificate(
        ca_dir=ca_dir,
        cell="cell-a",
        role=Role.MESHAPI,
        out_dir=tmp_path / "api",
        dns_names=["meshapi.cell-a.svc", "MeshAPI.example.org", "meshapi.cell-a.svc"],
        ip_addresses=["10.0.0.1", "::1"],
        now=NOW,
    )

    san = _ext(read_certificate(cert_path), x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["meshapi.cell-a.svc", "meshapi.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1", "::1"]


def test_agent_node_is_the_subject_common_name(ca_dir: Path, tmp_path: Path) -> None:
    cert_path = issue_certificate(
        ca_dir=ca_dir,
        cell="cell-a",
        role=Role.AGENT,
        out_dir=tmp_path / "agent",
        node="node-1.cell-a",
        now=NOW,
    )

    cn = read_certificate(cert_path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["node-1.cell-a"]


def test_validity_is_clipped_to_the_ca(tmp_path: Path) -> None:
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=tmp_path / "ca", days=30, now=NOW)
    cert_path = issue_certificate(
        ca_dir=tmp_path / "ca",
        cell="cell-a",
        role=Role.AGENT,
        out_dir=tmp_path / "agent",
        days=365,
        now=NOW + timedelta(days=1),
    )

    ca_cert = load_ca(tmp_path / "ca").cert
    assert read_certificate(cert_path).not_valid_after_utc == ca_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"cell": "Cell-A"}, CertInputError, "invalid cell name", id="cell-uppercase"),
        pytest.param({"cell": "c" * 33}, CertInputError, "33 characters", id="cell-too-long"),
        pytest.param({"cell": ""}, CertInputError, "cell name is empty", id="cell-empty"),
        pytest.param({"cell": "-cell"}, CertInputError, "invalid cell name", id="cell-dash"),
        pytest.param({"cell": "cell.a"}, CertInputError, "invalid cell name", id="cell-dot"),
        pytest.param({"role": "root"}, CertInputError, "unknown role 'root'", id="role-unknown"),
        pytest.param({"days": 0}, CertInputError, "at least 1 day", id="days-zero"),
        pytest.param({"days": 10**9}, CertInputError, "at most 36500", id="days-huge"),
        pytest.param(
            {"role": Role.ADMIN, "node": "node-1"},
            CertInputError,
            "admin certificates cannot have one",
            id="node-on-admin",
        ),
        pytest.param({"node": "Node_1"}, CertInputError, "invalid node name", id="node-bad"),
        pytest.param({"node": "n" * 65}, CertInputError, "at most 64", id="node-too-long"),
        pytest.param(
            {"dns_names": ["agent.local"]},
            CertInputError,
            "DNS and IP SANs are for meshapi",
            id="dns-on-agent",
        ),
        pytest.param(
            {"role": Role.MESHAPI, "dns_names": ["bad name"]},
            CertInputError,
            "invalid DNS name 'bad name'",
            id="dns-bad",
        ),
        pytest.param(
            {"role": Role.MESHAPI, "ip_addresses": ["10.0.0.300"]},
            CertInputError,
            "invalid IP address '10.0.0.300'",
            id="ip-bad",
        ),
        pytest.param(
            {"now": NOW + timedelta(days=4000)}, CertFileError, "expired at", id="ca-expired"
        ),
        pytest.param({"now": NOW.replace(tzinfo=None)}, CertInputError, "timezone", id="naive-now"),
    ],
)
def test_issue_rejects(
    ca_dir: Path, tmp_path: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    args: dict[str, object] = {
        "ca_dir": ca_dir,
        "cell": "cell-a",
        "role": Role.AGENT,
        "out_dir": tmp_path / "out",
        "now": NOW,
    }
    args.update(kwargs)

    with pytest.raises(error, match=re.escape(message)):
        issue_certificate(**args)  # type: ignore[arg-type]
    assert not (tmp_path / "out" / "tls.key").exists()


def test_issue_refuses_to_overwrite_unless_asked(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "agent"
    first = issue_certificate(ca_dir=ca_dir, cell="cell-a", role=Role.AGENT, out_dir=out, now=NOW)
    old = first.read_bytes()

    with pytest.raises(AlreadyExistsError, match=re.escape("tls.crt, tls.key")):
        issue_certificate(ca_dir=ca_dir, cell="cell-a", role=Role.AGENT, out_dir=out, now=NOW)
    assert first.read_bytes() == old

    issue_certificate(
        ca_dir=ca_dir, cell="cell-a", role=Role.AGENT, out_dir=out, now=NOW, overwrite=True
    )
    assert first.read_bytes() != old
    assert _mode(out / "tls.key") == 0o600


def test_issue_keeps_other_cas_in_the_bundle(
    ca_dir: Path, other_ca_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "agent"
    issue_certificate(ca_dir=other_ca_dir, cell="cell-a", role=Role.AGENT, out_dir=out, now=NOW)
    issue_certificate(
        ca_dir=ca_dir, cell="cell-a", role=Role.AGENT, out_dir=out, now=NOW, overwrite=True
    )
    issue_certificate(
        ca_dir=ca_dir, cell="cell-a", role=Role.AGENT, out_dir=out, now=NOW, overwrite=True
    )

    assert load_bundle(out / "ca.crt") == [load_ca(other_ca_dir).cert, load_ca(ca_dir).cert]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param("missing-key", "ca.key does not exist", id="missing-key"),
        pytest.param("garbage-cert", "not a PEM or DER", id="garbage-cert"),
        pytest.param("foreign-key", "is not the private key of", id="foreign-key"),
    ],
)
def test_load_ca_names_the_broken_file(
    ca_dir: Path, other_ca_dir: Path, damage: str, message: str
) -> None:
    if damage == "missing-key":
        (ca_dir / "ca.key").unlink()
    elif damage == "garbage-cert":
        (ca_dir / "ca.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    else:
        (ca_dir / "ca.key").write_bytes((other_ca_dir / "ca.key").read_bytes())

    with pytest.raises(CertFileError, match=re.escape(message)):
        load_ca(ca_dir)
