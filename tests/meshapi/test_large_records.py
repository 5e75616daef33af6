"""Records up to the 1 MiB value limit: a restarted meshapi lists them, watchers resume across it.

Real etcd, real meshapi over mTLS. Six identities of ~1 MiB each (valid records: an identity's
labels are free text) are more than one 2,000-key page can carry under gRPC's default 4 MiB
receive limit, and more than one listing batch should carry.
"""

from __future__ import annotations

import asyncio
import contextlib

from certs import Role
from meshapi.cache import LISTING_CHUNK_BYTES
from meshapi.etcd_adapter import EtcdStore
from meshapi.views import ViewName
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import MAX_VALUE_BYTES, Identity, Kind, encode_record, kind_prefix
from meshcore.watch import ListWatcher
from meshcore.wire import pb
from tests.conftest import MeshApiFactory, Pki, wait_for
from tests.meshapi.helpers import endpoint, running_watcher

LARGE = 6
LABEL_BYTES = 1_000_000


def large_identity(n: int, *, fill: str = "x") -> Identity:
    return Identity(
        cell="alpha",
        id=(1 << 16) | (n + 1),
        labels={"k8s:app": f"big-{n}", "k8s:blob": fill * LABEL_BYTES},
    )


async def write_large(admin: MeshClient, count: int, *, fill: str = "x") -> int:
    """One record per write: a txn must stay below etcd's 1.5 MiB request limit."""
    revision = 0
    for n in range(count):
        record = large_identity(n, fill=fill)
        assert len(encode_record(record)) <= MAX_VALUE_BYTES
        revision = await admin.write(puts=[record])
    return revision


async def test_restarted_meshapi_lists_and_watchers_resume_across_large_records(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    port = app.grpc_port
    addr = f"127.0.0.1:{port}"
    async with MeshClient(addr, pki.tls("alpha", Role.ADMIN)) as admin:
        await write_large(admin, LARGE)
    want = {large_identity(n).key() for n in range(LARGE)}
    async with running_watcher(addr, pki.tls("alpha", Role.AGENT), [Kind.IDENTITY]) as rw:
        await asyncio.wait_for(rw.watcher.synced.wait(), 20)
        assert rw.keys(Kind.IDENTITY) == want
        await app.stop()
        # While meshapi is down the cell changes, so the watcher's resume must read the store at
        # its old revision (6 MiB of identities) to compute the difference.
        store = EtcdStore([etcd.endpoint])
        await store.connect()
        try:
            extra = endpoint("alpha", 1)
            changed = await store.write(puts=[(extra.key(), encode_record(extra))])
        finally:
            await store.close()
        # Before the fix the restarted cache never lists (`RESOURCE_EXHAUSTED` on every page):
        # wait_ready times out and /readyz stays 503.
        restarted = await meshapi_factory("alpha", etcd, port=port)
        assert restarted.cache.synced.is_set()
        assert restarted.cache.connected
        assert set(restarted.cache.full) >= want
        await wait_for(
            lambda: restarted.cache.stats.resumes_from_store >= 1,
            timeout=20,
            what="the watcher to resume from the store",
        )
        await wait_for(
            lambda: rw.watcher.state == "watching" and rw.watcher.revision >= changed,
            timeout=20,
            what="the watcher to resume",
        )
        assert rw.keys(Kind.IDENTITY) == want
        assert rw.watcher.stats.listings == 1, "a resume must not relist"


async def test_listing_batches_are_bounded_by_bytes(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    app = await meshapi_factory("alpha", etcd)
    async with MeshClient(f"127.0.0.1:{app.grpc_port}", pki.tls("alpha", Role.ADMIN)) as admin:
        await write_large(admin, LARGE)
    sizes: list[int] = []
    keys: set[str] = set()
    stream = app.cache.stream(view=ViewName.FULL, kinds=frozenset({Kind.IDENTITY}))
    try:
        async for data in stream:
            batch = pb.WatchBatch.FromString(data)
            sizes.append(len(data))
            keys.update(ev.key for ev in batch.events)
            if batch.synced:
                break
    finally:
        await stream.aclose()
    assert keys == {large_identity(n).key() for n in range(LARGE)}
    # One batch may exceed the byte bound by at most the one record that crossed it.
    assert max(sizes) <= LISTING_CHUNK_BYTES + MAX_VALUE_BYTES + 4096, sizes
    assert len(sizes) >= 2, sizes


async def test_a_resume_that_keeps_failing_falls_back_to_a_relist(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    """The resume needs the store (history too short) and the store is down: meshapi answers
    `store unavailable` to every resume, but serves a listing from its memory."""
    app = await meshapi_factory("alpha", etcd, history_events=5)
    addr = f"127.0.0.1:{app.grpc_port}"
    admin = MeshClient(addr, pki.tls("alpha", Role.ADMIN))
    client = MeshClient(addr, pki.tls("alpha", Role.AGENT))
    watcher = ListWatcher(client, kinds=[Kind.ENDPOINT], backoff=(0.05,))
    task = asyncio.create_task(watcher.run())
    try:
        await admin.write(puts=[endpoint("alpha", n) for n in range(3)])
        await asyncio.wait_for(watcher.synced.wait(), 10)
        await wait_for(lambda: len(watcher.records) == 3, what="the first endpoints")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for n in range(3, 23):  # one write each: far past the 5 events of history
            await admin.write(puts=[endpoint("alpha", n)])
        await asyncio.to_thread(etcd.stop)
        task = asyncio.create_task(watcher.run())
        want = {endpoint("alpha", n).key() for n in range(23)}
        await wait_for(
            lambda: set(watcher.records) == want, timeout=30, what="the relist after resumes failed"
        )
        assert watcher.stats.resume_fallbacks == 1
        assert watcher.stats.relists == 1
        assert watcher.stats.resumes >= 3
        assert app.cache.stats.resumes_from_store == 0  # every resume failed, then a relist
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
        await admin.close()


async def test_pages_shrink_until_a_record_fits_the_receive_limit(
    pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory
) -> None:
    """A receive limit of 1.5 MiB (one record and a half): every page that is too large is asked
    again with fewer keys, now and at an older revision."""
    app = await meshapi_factory("alpha", etcd)
    async with MeshClient(f"127.0.0.1:{app.grpc_port}", pki.tls("alpha", Role.ADMIN)) as admin:
        old = await write_large(admin, LARGE, fill="o")
        await write_large(admin, LARGE, fill="n")
    store = EtcdStore([etcd.endpoint], max_receive_bytes=3 * MAX_VALUE_BYTES // 2)
    await store.connect()
    try:
        now, _ = await store.list_prefix(kind_prefix(Kind.IDENTITY))
        then, at = await store.list_prefix(kind_prefix(Kind.IDENTITY), revision=old)
    finally:
        await store.close()
    assert at == old
    assert (
        [kv.key for kv in now]
        == [kv.key for kv in then]
        == sorted(large_identity(n).key() for n in range(LARGE))
    )
    assert {kv.value for kv in now} == {
        encode_record(large_identity(n, fill="n")) for n in range(LARGE)
    }
    assert {kv.value for kv in then} == {
        encode_record(large_identity(n, fill="o")) for n in range(LARGE)
    }
