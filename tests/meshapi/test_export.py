"""Peers see only global+shared services (with their endpoints); the own cell sees everything."""

from __future__ import annotations

import asyncio

from certs import Role
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Kind
from tests.conftest import MeshApiFactory, Pki, wait_for
from tests.meshapi.helpers import endpoint, peer, running_watcher, service


async def test_peer_stream_carries_only_exported_services(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    addr = f"127.0.0.1:{app.grpc_port}"
    exported = service("alpha", "exported")
    unshared = service("alpha", "unshared", shared=False, vip="10.96.0.11")
    local = service("alpha", "local", global_=False, vip="10.96.0.12")
    eps = {
        name: [endpoint("alpha", i + off, service=name) for i in range(3)]
        for name, off in (("exported", 0), ("unshared", 10), ("local", 20))
    }
    async with MeshClient(addr, pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(
            puts=[exported, unshared, local, peer("alpha", "beta", id_=2)]
            + [e for group in eps.values() for e in group]
        )
        kinds = [Kind.SERVICE, Kind.ENDPOINT]
        async with (
            running_watcher(addr, pki.tls("beta", Role.AGENT, node="b1"), kinds) as remote,
            running_watcher(addr, pki.tls("alpha", Role.AGENT, node="n1"), kinds) as own,
        ):
            await asyncio.wait_for(remote.watcher.synced.wait(), 10)
            await asyncio.wait_for(own.watcher.synced.wait(), 10)
            assert remote.keys(Kind.SERVICE) == {exported.key()}
            assert remote.keys(Kind.ENDPOINT) == {e.key() for e in eps["exported"]}
            assert own.keys(Kind.SERVICE) == {exported.key(), unshared.key(), local.key()}
            assert own.keys(Kind.ENDPOINT) == {e.key() for g in eps.values() for e in g}

            # Live changes keep the filter: new endpoints of hidden services never reach peers.
            last = await admin.write(
                puts=[
                    endpoint("alpha", 30, service="unshared"),
                    endpoint("alpha", 31, service="local"),
                ]
            )
            await wait_for(lambda: own.watcher.revision >= last, what="own watcher")
            # The peer's stream is ordered: once a later exported change has arrived, a leaked
            # hidden endpoint would have arrived before it.
            sentinel = endpoint("alpha", 40, service="exported")
            await admin.write(puts=[sentinel])
            await wait_for(lambda: sentinel.key() in remote.watcher.records, what="sentinel")
            eps["exported"].append(sentinel)
            assert remote.keys(Kind.ENDPOINT) == {e.key() for e in eps["exported"]}

            # Flip shared to true: the service and all its endpoints appear for the peer ...
            await admin.write(puts=[service("alpha", "unshared", shared=True, vip="10.96.0.11")])
            want = {e.key() for e in eps["exported"] + eps["unshared"]} | {
                endpoint("alpha", 30, service="unshared").key()
            }
            await wait_for(lambda: remote.keys(Kind.ENDPOINT) == want, what="promoted endpoints")
            assert remote.keys(Kind.SERVICE) == {exported.key(), unshared.key()}
            # ... and back to false: they disappear again, the rest stays.
            await admin.write(puts=[unshared])
            await wait_for(
                lambda: remote.keys(Kind.ENDPOINT) == {e.key() for e in eps["exported"]},
                what="demoted endpoints gone",
            )
            assert remote.keys(Kind.SERVICE) == {exported.key()}
            assert not any("peers/" in k for k in remote.watcher.records)
