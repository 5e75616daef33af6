"""Other implementations agree with us: openssl, cryptography's verifier, and a real TLS handshake.

The handshake runs OpenSSL (through the stdlib `ssl` module) over in-memory BIOs: mutual TLS
between a meshapi certificate and an agent certificate, with no socket at all, then reads the
client's identity the way meshapi will.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certs import (
    MeshIdentity,
    Role,
    add_to_bundle,
    create_ca,
    identity_from_certificate,
    issue_certificate,
    load_bundle,
)
from certs.pemfiles import read_certificate

from .conftest import TRUST_DOMAIN

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
needs_openssl = pytest.mark.skipif(not Path(OPENSSL).exists(), reason="openssl not installed")


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """Overrides conftest's CA: openssl and TLS check against the real clock, not `NOW`."""
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def other_ca_dir(tmp_path: Path) -> Path:
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=tmp_path / "other-ca")
    return tmp_path / "other-ca"


def _openssl(*args: str) -> str:
    result = subprocess.run(
        [OPENSSL, *args], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_openssl
@pytest.mark.parametrize("role", list(Role), ids=[r.value for r in Role])
def test_openssl_parses_and_verifies(ca_dir: Path, tmp_path: Path, role: Role) -> None:
    out = tmp_path / role.value
    cert = issue_certificate(ca_dir=ca_dir, cell="cell-a", role=role, out_dir=out)

    text = _openssl("x509", "-noout", "-text", "-in", str(cert))

    assert f"URI:spiffe://{TRUST_DOMAIN}/cell/cell-a/{role.value}" in text
    assert "CA:FALSE" in text
    assert "TLS Web Client Authentication" in text
    purpose = "sslserver" if role is Role.MESHAPI else "sslclient"
    verified = _openssl("verify", "-purpose", purpose, "-CAfile", str(out / "ca.crt"), str(cert))
    assert verified.strip().endswith("OK")


@needs_openssl
def test_openssl_reads_the_ca_trust_domain(ca_dir: Path) -> None:
    text = _openssl("x509", "-noout", "-text", "-in", str(ca_dir / "ca.crt"))

    assert f"URI:spiffe://{TRUST_DOMAIN}" in text
    assert "CA:TRUE, pathlen:0" in text
    assert "Certificate Sign, CRL Sign" in text


@needs_openssl
def test_openssl_reads_the_pkcs8_key(ca_dir: Path, tmp_path: Path) -> None:
    issue_certificate(ca_dir=ca_dir, cell="a", role=Role.AGENT, out_dir=tmp_path)

    assert (tmp_path / "tls.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    text = _openssl("pkey", "-noout", "-text", "-in", str(tmp_path / "tls.key"))
    assert "prime256v1" in text or "P-256" in text


def test_cryptography_verifier_accepts_the_chain(ca_dir: Path, tmp_path: Path) -> None:
    api = issue_certificate(ca_dir=ca_dir, cell="a", role=Role.MESHAPI, out_dir=tmp_path / "api")
    agent = issue_certificate(ca_dir=ca_dir, cell="a", role=Role.AGENT, out_dir=tmp_path / "agent")
    policy = PolicyBuilder().store(Store(load_bundle(ca_dir / "ca.crt")))

    server_chain = policy.build_server_verifier(x509.DNSName("localhost")).verify(
        read_certificate(api), []
    )
    client = policy.build_client_verifier().verify(read_certificate(agent), [])

    assert len(server_chain) == 2
    assert client.chain[-1] == read_certificate(ca_dir / "ca.crt")


def _pump(client: ssl.SSLObject, server: ssl.SSLObject, wire: list[ssl.MemoryBIO]) -> None:
    """Drive both handshakes to completion, moving bytes between the in-memory BIOs."""
    client_in, client_out, server_in, server_out = wire
    pending = {"client": client, "server": server}
    for _ in range(50):
        for name, side in list(pending.items()):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLError as e:
                e.add_note(f"raised by the {name}")
                raise
            del pending[name]
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            return
    raise AssertionError(f"handshake did not finish: {sorted(pending)} pending")


def _mtls(server_dir: Path, client_dir: Path) -> MeshIdentity:
    """A mutual-TLS handshake; returns the client's identity as the server sees it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(server_dir / "tls.crt", server_dir / "tls.key")
    server_ctx.load_verify_locations(cafile=server_dir / "ca.crt")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(client_dir / "tls.crt", client_dir / "tls.key")
    client_ctx.load_verify_locations(cafile=client_dir / "ca.crt")
    wire = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(wire[0], wire[1], server_hostname="localhost")
    server = server_ctx.wrap_bio(wire[2], wire[3], server_side=True)

    _pump(client, server, wire)

    peer = server.getpeercert(binary_form=True)
    assert peer is not None
    return identity_from_certificate(peer, trust_domain=TRUST_DOMAIN)


def test_mutual_tls_handshake_and_identity(ca_dir: Path, tmp_path: Path) -> None:
    issue_certificate(ca_dir=ca_dir, cell="cell-a", role=Role.MESHAPI, out_dir=tmp_path / "api")
    issue_certificate(
        ca_dir=ca_dir, cell="cell-a", role=Role.AGENT, out_dir=tmp_path / "n1", node="node-1"
    )

    assert _mtls(tmp_path / "api", tmp_path / "n1") == MeshIdentity(
        trust_domain=TRUST_DOMAIN, cell="cell-a", role=Role.AGENT, node="node-1"
    )


def test_mutual_tls_refuses_a_client_of_another_ca(
    ca_dir: Path, other_ca_dir: Path, tmp_path: Path
) -> None:
    issue_certificate(ca_dir=ca_dir, cell="cell-a", role=Role.MESHAPI, out_dir=tmp_path / "api")
    issue_certificate(ca_dir=other_ca_dir, cell="cell-b", role=Role.PEER, out_dir=tmp_path / "b")
    # The client trusts the server's CA, so only the server's check can fail.
    add_to_bundle(bundle=tmp_path / "b" / "ca.crt", ca_cert=ca_dir / "ca.crt")

    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed") as caught:
        _mtls(tmp_path / "api", tmp_path / "b")
    assert caught.value.__notes__ == ["raised by the server"]


def test_mutual_tls_during_rotation(ca_dir: Path, other_ca_dir: Path, tmp_path: Path) -> None:
    # The server's bundle holds the old and the new CA; a client from the new CA gets in.
    issue_certificate(ca_dir=ca_dir, cell="cell-a", role=Role.MESHAPI, out_dir=tmp_path / "api")
    add_to_bundle(bundle=tmp_path / "api" / "ca.crt", ca_cert=other_ca_dir / "ca.crt")
    issue_certificate(ca_dir=other_ca_dir, cell="cell-b", role=Role.PEER, out_dir=tmp_path / "b")
    add_to_bundle(bundle=tmp_path / "b" / "ca.crt", ca_cert=ca_dir / "ca.crt")

    identity = _mtls(tmp_path / "api", tmp_path / "b")

    assert (identity.cell, identity.role) == ("cell-b", Role.PEER)
