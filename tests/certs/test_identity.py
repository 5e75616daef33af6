"""identity_from_certificate: the roundtrip, and every way a certificate is not a mesh identity."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certs import (
    CertError,
    CertInputError,
    IdentityError,
    MeshIdentity,
    Role,
    identity_from_certificate,
    issue_certificate,
    parse_spiffe_id,
    validate_cell_name,
)
from certs.pemfiles import read_certificate

from .conftest import NOW, TRUST_DOMAIN, ForgeLeaf


@pytest.mark.parametrize(
    ("role", "node"),
    [
        pytest.param(Role.MESHAPI, None, id="meshapi"),
        pytest.param(Role.AGENT, None, id="agent-unbound"),
        pytest.param(Role.AGENT, "node-7", id="agent-node"),
        pytest.param(Role.PEER, None, id="peer"),
        pytest.param(Role.ADMIN, None, id="admin"),
    ],
)
def test_identity_roundtrip(ca_dir: Path, tmp_path: Path, role: Role, node: str | None) -> None:
    cert_path = issue_certificate(
        ca_dir=ca_dir, cell="cell-b", role=role, out_dir=tmp_path / "tls", node=node, now=NOW
    )
    cert = read_certificate(cert_path)
    expected = MeshIdentity(trust_domain=TRUST_DOMAIN, cell="cell-b", role=role, node=node)

    assert identity_from_certificate(cert, trust_domain=TRUST_DOMAIN) == expected
    assert identity_from_certificate(cert_path.read_bytes()) == expected
    assert identity_from_certificate(cert.public_bytes(Encoding.DER)) == expected
    assert expected.spiffe_id == f"spiffe://{TRUST_DOMAIN}/cell/cell-b/{role.value}"


def test_identity_error_is_a_cert_error() -> None:
    assert issubclass(IdentityError, CertError)


@pytest.mark.parametrize(
    ("uris", "common_name", "message"),
    [
        pytest.param([], "x", "has no SPIFFE URI SAN", id="no-uri-san"),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cell/a/agent", f"spiffe://{TRUST_DOMAIN}/cell/b/agent"],
            "x",
            "has 2 URI SANs",
            id="two-uri-sans",
        ),
        pytest.param(
            ["https://mesh.example.org/cell/a/agent"], "x", "not a SPIFFE ID", id="not-spiffe"
        ),
        pytest.param(
            ["spiffe://other.example.org/cell/a/agent"],
            "x",
            "belongs to trust domain 'other.example.org', expected 'mesh.example.org'",
            id="wrong-trust-domain",
        ),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cell/a/root"], "x", "unknown role 'root'", id="unknown-role"
        ),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cells/a/agent"], "x", "malformed path", id="path-prefix"
        ),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cell/a/agent/extra"], "x", "malformed path", id="path-long"
        ),
        pytest.param([f"spiffe://{TRUST_DOMAIN}/cell/a"], "x", "malformed path", id="path-short"),
        pytest.param([f"spiffe://{TRUST_DOMAIN}"], "x", "malformed path", id="no-path"),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cell/Cell-A/agent"],
            "x",
            "invalid cell name 'Cell-A'",
            id="cell-uppercase",
        ),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cell/{'c' * 33}/agent"],
            "x",
            "33 characters long",
            id="cell-too-long",
        ),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cell//agent"], "x", "cell name is empty", id="cell-empty"
        ),
        pytest.param(
            ["spiffe://Mesh.Example.Org/cell/a/agent"],
            "x",
            "invalid trust domain",
            id="trust-domain-uppercase",
        ),
        pytest.param(
            [f"spiffe://{TRUST_DOMAIN}/cell/a/agent"],
            "Node_1",
            "common name is not a node name",
            id="agent-bad-node",
        ),
    ],
)
def test_identity_rejects(
    forge_leaf: ForgeLeaf, uris: list[str], common_name: str, message: str
) -> None:
    cert = forge_leaf(uris=uris, common_name=common_name)

    with pytest.raises(IdentityError, match=re.escape(message)):
        identity_from_certificate(cert, trust_domain=TRUST_DOMAIN)


def test_identity_without_expected_trust_domain_accepts_any(forge_leaf: ForgeLeaf) -> None:
    cert = forge_leaf(uris=["spiffe://other.example.org/cell/a/peer"])

    assert identity_from_certificate(cert) == MeshIdentity(
        trust_domain="other.example.org", cell="a", role=Role.PEER
    )


def test_node_is_read_only_for_agents(forge_leaf: ForgeLeaf) -> None:
    cert = forge_leaf(uris=[f"spiffe://{TRUST_DOMAIN}/cell/a/admin"], common_name="node-1")

    assert identity_from_certificate(cert).node is None


def test_identity_rejects_garbage_bytes() -> None:
    with pytest.raises(IdentityError, match="not a PEM or DER"):
        identity_from_certificate(b"\x30\x03garbage")


def test_parse_spiffe_id() -> None:
    assert parse_spiffe_id("spiffe://td.local/cell/c1/meshapi") == MeshIdentity(
        trust_domain="td.local", cell="c1", role=Role.MESHAPI
    )


@pytest.mark.parametrize(
    "cell",
    [
        pytest.param("a", id="one-char"),
        pytest.param("cell-a", id="dash"),
        pytest.param("0cell9", id="digits"),
        pytest.param("c" * 32, id="32-chars"),
    ],
)
def test_valid_cell_names(cell: str) -> None:
    assert validate_cell_name(cell) == cell


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("Cell", "invalid cell name", id="uppercase"),
        pytest.param("c" * 33, "at most 32", id="too-long"),
        pytest.param("cell-", "invalid cell name", id="trailing-dash"),
        pytest.param("-cell", "invalid cell name", id="leading-dash"),
        pytest.param("cell_a", "invalid cell name", id="underscore"),
        pytest.param("cell.a", "invalid cell name", id="dot"),
        pytest.param("céll", "invalid cell name", id="non-ascii"),
    ],
)
def test_invalid_cell_names(cell: str, message: str) -> None:
    with pytest.raises(CertInputError, match=re.escape(message)):
        validate_cell_name(cell)
