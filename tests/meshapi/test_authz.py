"""The authorization matrix, over real TLS connections to a real meshapi."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest

from certs import Role
from meshapi.app import MeshApiApp
from meshcore import wire
from meshcore.client import AccessDenied, CertificateRefused, MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind, Peer
from meshcore.wire import pb
from tests.conftest import MeshApiFactory, Pki
from tests.meshapi.helpers import endpoint, peer, service


@pytest.fixture
async def alpha(pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory) -> MeshApiApp:
    app = await meshapi_factory("alpha", etcd)
    async with MeshClient(f"127.0.0.1:{app.grpc_port}", pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(
            puts=[service("alpha"), endpoint("alpha", 1), peer("alpha", "beta", id_=2)]
        )
    return app


async def _first_batch(address: str, tls_dir: Path) -> pb.WatchBatch:
    async with MeshClient(address, tls_dir) as client:
        async for batch in client.watch([Kind.SERVICE]):
            return batch
    raise AssertionError("stream ended without a batch")


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        pytest.param(("alpha", Role.AGENT, "n1"), "allowed", id="own-agent"),
        pytest.param(("alpha", Role.ADMIN, None), "allowed", id="own-admin"),
        pytest.param(("beta", Role.AGENT, "b1"), "allowed", id="connected-peer-agent"),
        pytest.param(("beta", Role.PEER, None), "allowed", id="connected-peer-cell"),
        pytest.param(
            ("alpha", Role.PEER, None),
            "role peer of cell alpha may not watch",
            id="own-cell-wrong-role",
        ),
        pytest.param(
            ("beta", Role.ADMIN, None), "role admin of cell beta may not use", id="peer-admin-role"
        ),
        pytest.param(("gamma", Role.AGENT, None), "not a connected peer", id="peer-not-connected"),
    ],
)
async def test_watch_authorization(
    pki: Pki, alpha: MeshApiApp, who: tuple[str, Role, str | None], expected: str
) -> None:
    cell, role, node = who
    address = f"127.0.0.1:{alpha.grpc_port}"
    if expected == "allowed":
        batch = await _first_batch(address, pki.tls(cell, role, node=node))
        assert batch.synced
        assert [ev.key for ev in batch.events] == [service("alpha").key()]
    else:
        with pytest.raises(AccessDenied, match=expected) as info:
            await _first_batch(address, pki.tls(cell, role, node=node))
        assert info.value.code == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("who", "write", "expected"),
    [
        pytest.param(("alpha", Role.ADMIN, None), "service", "allowed", id="admin-writes-service"),
        pytest.param(("alpha", Role.AGENT, "n1"), "own-endpoint", "allowed", id="agent-own-node"),
        pytest.param(
            ("alpha", Role.AGENT, "n2"),
            "own-endpoint",
            "may write only its own node",
            id="agent-other-node",
        ),
        pytest.param(
            ("alpha", Role.AGENT, None), "own-endpoint", "names no node", id="agent-without-node"
        ),
        pytest.param(
            ("alpha", Role.AGENT, "n1"),
            "service",
            "may not write services",
            id="agent-writes-service",
        ),
        pytest.param(("beta", Role.PEER, None), "service", "peers are read-only", id="peer-writes"),
        pytest.param(
            ("beta", Role.AGENT, "b1"),
            "own-endpoint",
            "peers are read-only",
            id="peer-agent-writes",
        ),
        pytest.param(
            ("alpha", Role.ADMIN, None),
            "canary",
            "written by meshapi itself",
            id="admin-writes-canary",
        ),
    ],
)
async def test_write_authorization(
    pki: Pki, alpha: MeshApiApp, who: tuple[str, Role, str | None], write: str, expected: str
) -> None:
    from meshcore.model import SyncCanary

    cell, role, node = who
    record = {
        "service": service("alpha", "other"),
        "own-endpoint": endpoint("alpha", 7, node="n1"),
        "canary": SyncCanary(cell="alpha", kind=Kind.SERVICE, timestamp=1.0),
    }[write]
    async with MeshClient(f"127.0.0.1:{alpha.grpc_port}", pki.tls(cell, role, node=node)) as client:
        if expected == "allowed":
            assert await client.write(puts=[record]) > 0
        else:
            with pytest.raises(AccessDenied, match=expected):
                await client.write(puts=[record])


async def test_peer_cannot_apply_manifests(pki: Pki, alpha: MeshApiApp) -> None:
    async with MeshClient(f"127.0.0.1:{alpha.grpc_port}", pki.tls("beta", Role.PEER)) as client:
        with pytest.raises(AccessDenied, match="not an admin of cell alpha"):
            await client.apply_manifest("kind: Service\nmetadata: {name: x}\n", source="x.yaml")


async def test_certificate_from_another_ca_is_refused(foreign_pki: Pki, alpha: MeshApiApp) -> None:
    with pytest.raises(CertificateRefused) as info:
        await _first_batch(f"127.0.0.1:{alpha.grpc_port}", foreign_pki.tls("alpha", Role.ADMIN))
    assert info.value.code == "UNAVAILABLE"
    assert "is not trusted" in str(info.value)


async def test_expired_certificate_is_refused(expired_admin_tls: Path, alpha: MeshApiApp) -> None:
    with pytest.raises(CertificateRefused) as info:
        await _first_batch(f"127.0.0.1:{alpha.grpc_port}", expired_admin_tls)
    assert "refused this client's certificate" in str(info.value)
    assert "expired at" in str(info.value)


async def test_client_without_certificate_is_refused(pki: Pki, alpha: MeshApiApp) -> None:
    ca = (pki.tls("alpha", Role.ADMIN) / "ca.crt").read_bytes()
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{alpha.grpc_port}", grpc.ssl_channel_credentials(root_certificates=ca)
    )
    try:
        call = channel.unary_unary(
            wire.GET_CELL, pb.GetCellRequest.SerializeToString, pb.GetCellResponse.FromString
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(pb.GetCellRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()


def _s_client(port: int, ca: Path, *extra: str, timeout: float) -> str | None:
    """s_client output once the server closed the connection; None if it kept it open."""
    try:
        proc = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca),
             "-alpn", "h2", "-ign_eof", *extra],
            input=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            capture_output=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    return (proc.stdout + proc.stderr).decode(errors="replace").lower()


async def test_openssl_s_client_without_certificate_is_refused(pki: Pki, alpha: MeshApiApp) -> None:
    tls = pki.tls("alpha", Role.ADMIN)
    refused = await asyncio.to_thread(_s_client, alpha.grpc_port, tls / "ca.crt", timeout=15)
    # TLS 1.3: the server checks the client certificate after the client's Finished and closes
    # the connection before any application byte: the client sees an alert or an EOF.
    assert refused is not None, "the server kept a connection without a client certificate"
    assert "certificate required" in refused or "unexpected eof" in refused, refused[-1500:]
    # Control: with a certificate the server keeps the connection open (it speaks HTTP/2).
    accepted = await asyncio.to_thread(
        _s_client, alpha.grpc_port, tls / "ca.crt",
        "-cert", str(tls / "tls.crt"), "-key", str(tls / "tls.key"), timeout=2,
    )  # fmt: skip
    assert accepted is None, accepted


async def test_unicast_directions_decide_who_may_watch(pki: Pki, alpha: MeshApiApp) -> None:
    """alpha watches gamma without exporting to it; delta may read alpha (a grant only)."""
    address = f"127.0.0.1:{alpha.grpc_port}"
    async with MeshClient(address, pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(
            puts=[
                Peer(cell="alpha", name="gamma", id=3, address="127.0.0.1:1", export=False),
                Peer(cell="alpha", name="delta", id=4, address="127.0.0.1:1", watch=False),
            ]
        )
    with pytest.raises(AccessDenied, match="cell alpha watches cell gamma but does not export"):
        await _first_batch(address, pki.tls("gamma", Role.AGENT, node="g1"))
    batch = await _first_batch(address, pki.tls("delta", Role.AGENT, node="d1"))
    assert [ev.key for ev in batch.events] == [service("alpha").key()]
