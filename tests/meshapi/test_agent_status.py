"""Agent status records on a real meshapi: who may write them, who may see them.

An agent writes only its own node's status (like its node record); the admin may remove a
report; the own cell's agents and admin see every report (full view); connected peers never do.
"""

from __future__ import annotations

import asyncio

import pytest

from certs import Role
from meshapi.app import MeshApiApp
from meshcore.client import AccessDenied, MeshClient, RequestRejected
from meshcore.localetcd import LocalEtcd
from meshcore.model import AgentStatus, Kind, PeerReport, agent_key, encode_record
from tests.conftest import MeshApiFactory, Pki
from tests.meshapi.helpers import peer, running_watcher


def status(node: str, *, cell: str = "alpha") -> AgentStatus:
    return AgentStatus(
        cell=cell,
        node=node,
        updated_at=1_700_000_000.0,
        ready=True,
        reason="ready",
        peers=[PeerReport(cell=cell, local=True, state="ready", synced=True)],
    )


@pytest.fixture
async def alpha(pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory) -> MeshApiApp:
    app = await meshapi_factory("alpha", etcd)
    async with MeshClient(f"127.0.0.1:{app.grpc_port}", pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(puts=[peer("alpha", "beta", id_=2)])
    return app


def address(app: MeshApiApp) -> str:
    return f"127.0.0.1:{app.grpc_port}"


async def test_agent_writes_only_its_own_status(pki: Pki, alpha: MeshApiApp) -> None:
    async with MeshClient(address(alpha), pki.tls("alpha", Role.AGENT, node="n1")) as agent:
        assert await agent.write(puts=[status("n1")]) > 0
        with pytest.raises(AccessDenied, match="agent of node n1 may write only its own node's"):
            await agent.write(puts=[status("n2")])
    assert agent_key("alpha", "n1") in alpha.cache.full
    assert agent_key("alpha", "n2") not in alpha.cache.full

    # Another node's agent may not overwrite or delete it either.
    async with MeshClient(address(alpha), pki.tls("alpha", Role.AGENT, node="n2")) as other:
        with pytest.raises(AccessDenied, match="agent of node n2 may write only"):
            await other.write(deletes=[agent_key("alpha", "n1")])


async def test_peers_cannot_write_status(pki: Pki, alpha: MeshApiApp) -> None:
    async with MeshClient(address(alpha), pki.tls("beta", Role.AGENT, node="n1")) as remote:
        with pytest.raises(AccessDenied, match="peers are read-only"):
            await remote.write(puts=[status("n1")])


async def test_invalid_status_is_rejected_with_the_field(pki: Pki, alpha: MeshApiApp) -> None:
    body = encode_record(status("n1")).replace(b'"state":"ready"', b'"state":"happy"')
    async with MeshClient(address(alpha), pki.tls("alpha", Role.AGENT, node="n1")) as agent:
        with pytest.raises(RequestRejected, match=r"peers\[0\]\.state: Input should be"):
            await agent.write_raw(puts=[(agent_key("alpha", "n1"), body)])
        with pytest.raises(RequestRejected, match="record of cell 'beta' written to cell 'alpha'"):
            await agent.write(puts=[status("n1", cell="beta")])


async def test_admin_removes_a_report(pki: Pki, alpha: MeshApiApp) -> None:
    async with MeshClient(address(alpha), pki.tls("alpha", Role.AGENT, node="n1")) as agent:
        await agent.write(puts=[status("n1")])
    async with MeshClient(address(alpha), pki.tls("alpha", Role.ADMIN)) as admin:
        listed, _ = await admin.list([Kind.AGENT])
        assert [key for key, _ in listed] == [agent_key("alpha", "n1")]
        await admin.write(deletes=[agent_key("alpha", "n1")])
    assert agent_key("alpha", "n1") not in alpha.cache.full


async def test_peers_never_see_status(pki: Pki, alpha: MeshApiApp) -> None:
    async with MeshClient(address(alpha), pki.tls("alpha", Role.AGENT, node="n1")) as agent:
        await agent.write(puts=[status("n1")])
    async with (
        running_watcher(address(alpha), pki.tls("beta", Role.AGENT, node="b1")) as remote,
        running_watcher(address(alpha), pki.tls("alpha", Role.AGENT, node="n2")) as own,
        running_watcher(address(alpha), pki.tls("beta", Role.PEER), [Kind.AGENT]) as asked,
    ):
        for w in (remote, own, asked):
            await asyncio.wait_for(w.watcher.synced.wait(), 10)
        assert own.keys(Kind.AGENT) == {agent_key("alpha", "n1")}
        assert remote.keys(Kind.AGENT) == set()
        assert asked.keys(Kind.AGENT) == set()
        assert remote.keys(Kind.HEARTBEAT)  # the peer does see the cell-wide kinds
    async with MeshClient(address(alpha), pki.tls("beta", Role.AGENT, node="b1")) as remote_client:
        listed, _ = await remote_client.list([Kind.AGENT])
        assert listed == []
