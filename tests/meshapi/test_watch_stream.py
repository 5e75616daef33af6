"""List-then-watch semantics against a real etcd and a real meshapi over mTLS."""

from __future__ import annotations

import asyncio

from certs import Role
from meshapi.etcd_adapter import EtcdStore
from meshapi.writer import RecordWriter
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Endpoint, Kind, encode_record, kind_prefix, synced_key
from tests.conftest import MeshApiFactory, Pki, wait_for
from tests.meshapi.helpers import endpoint, running_watcher, service


async def test_list_then_watch_delivers_every_change_in_order(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    addr = f"127.0.0.1:{app.grpc_port}"
    async with MeshClient(addr, pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(puts=[service("alpha")] + [endpoint("alpha", i) for i in range(20)])
        async with running_watcher(addr, pki.tls("alpha", Role.AGENT), [Kind.ENDPOINT]) as rw:
            await asyncio.wait_for(rw.watcher.synced.wait(), 10)
            assert rw.keys(Kind.ENDPOINT) == {endpoint("alpha", i).key() for i in range(20)}
            listed = len(rw.changes)
            # Then single writes, each a distinct change: updates, deletes, new keys, interleaved.
            present = {endpoint("alpha", i).key() for i in range(20)}
            expected: list[tuple[str, float | None]] = []
            last = 0
            for step in range(1, 80):
                ep = endpoint("alpha", step % 25).model_copy(update={"updated_at": float(step)})
                if step % 7 == 3 and ep.key() in present:
                    last = await admin.write(deletes=[ep.key()])
                    present.discard(ep.key())
                    expected.append((ep.key(), None))
                else:
                    last = await admin.write(puts=[ep])
                    present.add(ep.key())
                    expected.append((ep.key(), float(step)))
            await wait_for(lambda: rw.watcher.revision >= last, what="watcher to reach last write")
            seen = [
                (c.key, c.record.updated_at if isinstance(c.record, Endpoint) else None)
                for c in rw.changes[listed:]
            ]
            assert seen == expected
            assert rw.keys(Kind.ENDPOINT) == present
            assert rw.watcher.stats.listings == 1


async def test_resume_after_meshapi_restart_without_relist(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    port = app.grpc_port
    addr = f"127.0.0.1:{port}"
    async with MeshClient(addr, pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(puts=[endpoint("alpha", i) for i in range(30)])
    async with running_watcher(addr, pki.tls("alpha", Role.AGENT), [Kind.ENDPOINT]) as rw:
        await asyncio.wait_for(rw.watcher.synced.wait(), 10)
        await app.stop()
        # While meshapi is down, the cell changes underneath it.
        store = EtcdStore([etcd.endpoint])
        await store.connect()
        try:
            await store.write(
                puts=[
                    (endpoint("alpha", i).key(), encode_record(endpoint("alpha", i)))
                    for i in range(30, 35)
                ],
                deletes=[endpoint("alpha", i).key() for i in range(5)],
            )
        finally:
            await store.close()
        changes_before = len(rw.changes)
        await meshapi_factory("alpha", etcd, port=port)
        want = {endpoint("alpha", i).key() for i in range(5, 35)}
        await wait_for(lambda: rw.keys(Kind.ENDPOINT) == want, what="resumed state")
        assert rw.watcher.stats.listings == 1, "a resume must not relist"
        assert rw.watcher.stats.resumes >= 1
        delta = rw.changes[changes_before:]
        assert sorted(c.key for c in delta if c.record is None) == sorted(
            endpoint("alpha", i).key() for i in range(5)
        )
        assert sorted(c.key for c in delta if c.record is not None) == sorted(
            endpoint("alpha", i).key() for i in range(30, 35)
        )


async def test_compacted_revision_relists_and_sweeps_exactly_the_deleted_keys(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    port = app.grpc_port
    addr = f"127.0.0.1:{port}"
    async with MeshClient(addr, pki.tls("alpha", Role.ADMIN)) as admin:
        await admin.write(puts=[endpoint("alpha", i) for i in range(50)])
    async with running_watcher(addr, pki.tls("alpha", Role.AGENT), [Kind.ENDPOINT]) as rw:
        await asyncio.wait_for(rw.watcher.synced.wait(), 10)
        await app.stop()
        store = EtcdStore([etcd.endpoint])
        await store.connect()
        try:
            deleted = [endpoint("alpha", i).key() for i in range(0, 50, 5)]
            await store.write(deletes=deleted)
            added = [endpoint("alpha", i) for i in range(100, 105)]
            await store.write(puts=[(e.key(), encode_record(e)) for e in added])
            await store.compact(await store.current_revision())
        finally:
            await store.close()
        changes_before = len(rw.changes)
        await meshapi_factory("alpha", etcd, port=port)
        want = {endpoint("alpha", i).key() for i in range(50) if i % 5} | {e.key() for e in added}
        await wait_for(lambda: rw.keys(Kind.ENDPOINT) == want, what="relisted state")
        assert rw.watcher.stats.relists == 1
        assert rw.watcher.stats.listings == 2
        delta = rw.changes[changes_before:]
        assert sorted(c.key for c in delta if c.record is None) == sorted(deleted)
        assert sorted(c.key for c in delta if c.record is not None) == sorted(
            e.key() for e in added
        )


async def test_synced_canary_lands_only_after_pending_writes(etcd: LocalEtcd) -> None:
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    writer = RecordWriter(store, cell="alpha")
    task = asyncio.create_task(writer.run())
    try:
        endpoints = [endpoint("alpha", i) for i in range(1500)]
        pending = [writer.submit(puts=[(e.key(), encode_record(e))]) for e in endpoints]
        canary = writer.mark_synced(Kind.ENDPOINT)
        canary_revision = await asyncio.wait_for(canary, 30)
        assert all(f.done() for f in pending), "canary landed before a pending write"
        kv = await store.get(synced_key("alpha", Kind.ENDPOINT))
        assert kv is not None
        assert kv.mod_revision == canary_revision
        # Just before the canary's revision, every endpoint is already in the store.
        before, _ = await store.list_prefix(
            kind_prefix(Kind.ENDPOINT), revision=canary_revision - 1
        )
        assert {kv.key for kv in before} == {e.key() for e in endpoints}
        assert max(kv.mod_revision for kv in before) < canary_revision
        assert writer.stats.txns > 2, "writes should be batched into several txns"
        assert writer.stats.txns < 100, "1500 writes should not take one txn each"
    finally:
        task.cancel()
        await store.close()
