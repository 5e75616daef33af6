"""The record writer against a real etcd: same-key writes in one batch, per-key order, and a write
etcd refuses failing only its own caller while every other write (heartbeats) keeps landing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from meshapi.etcd_adapter import EtcdStore
from meshapi.writer import RecordWriter, WriteRejected
from meshcore.localetcd import LocalEtcd
from tests.conftest import wait_for

KEY = "cellmesh/v1/test/key"
# Over etcd's request limit (1.5 MiB; gRPC refuses 2 MiB): etcd refuses it, every time.
POISON = b"x" * (2 * 1024 * 1024 + 1)
PATIENCE = 10.0  # the old writer retried such batches forever: fail, do not hang


@pytest.fixture
async def store(etcd: LocalEtcd) -> AsyncIterator[EtcdStore]:
    s = EtcdStore([etcd.endpoint])
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def running(writer: RecordWriter) -> AsyncIterator[RecordWriter]:
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def value_of(store: EtcdStore, key: str) -> bytes | None:
    kv = await store.get(key)
    return None if kv is None else kv.value


async def test_two_queued_writes_to_one_key_land_with_the_last_value(store: EtcdStore) -> None:
    writer = RecordWriter(store, cell="alpha")
    # Queued before the writer runs: both travel in one batch (as heartbeats behind a busy
    # writer did).
    first = writer.submit(puts=[(KEY, b"1"), ("cellmesh/v1/test/other", b"o")])
    second = writer.submit(puts=[(KEY, b"2")])
    async with running(writer):
        revisions = await asyncio.wait_for(asyncio.gather(first, second), PATIENCE)
    assert revisions[0] == revisions[1], "both writes landed in one txn"
    assert await value_of(store, KEY) == b"2"
    assert await value_of(store, "cellmesh/v1/test/other") == b"o"
    assert writer.stats.coalesced == 1
    assert writer.stats.rejected_batches == 0


async def test_put_then_delete_of_one_key_keeps_the_delete(store: EtcdStore) -> None:
    await store.write(puts=[(KEY, b"0")])
    writer = RecordWriter(store, cell="alpha")
    put = writer.submit(puts=[(KEY, b"1")])
    delete = writer.submit(deletes=[KEY])
    async with running(writer):
        await asyncio.wait_for(asyncio.gather(put, delete), PATIENCE)
    assert await value_of(store, KEY) is None


async def test_delete_then_put_of_one_key_keeps_the_put(store: EtcdStore) -> None:
    await store.write(puts=[(KEY, b"0")])
    writer = RecordWriter(store, cell="alpha")
    delete = writer.submit(deletes=[KEY])
    put = writer.submit(puts=[(KEY, b"1")])
    async with running(writer):
        await asyncio.wait_for(asyncio.gather(delete, put), PATIENCE)
    assert await value_of(store, KEY) == b"1"


@pytest.mark.parametrize(
    ("poison_key", "poison_value", "batched"),
    [
        # etcd refuses an empty key ("key is not provided"): it travels in a batch with others.
        pytest.param("", b"v", True, id="empty-key-in-a-batch"),
        pytest.param("cellmesh/v1/test/poison", POISON, False, id="over-the-size-limit"),
    ],
)
async def test_a_refused_write_fails_only_its_caller(
    store: EtcdStore, poison_key: str, poison_value: bytes, batched: bool
) -> None:
    writer = RecordWriter(store, cell="alpha")
    before = [writer.submit(puts=[(f"cellmesh/v1/test/b{i}", b"b")]) for i in range(5)]
    poison = writer.submit(puts=[(poison_key, poison_value)])
    after = [writer.submit(puts=[(f"cellmesh/v1/test/a{i}", b"a")]) for i in range(5)]
    async with running(writer):
        with pytest.raises(WriteRejected, match="etcd refused the write"):
            await asyncio.wait_for(poison, PATIENCE)
        await asyncio.wait_for(asyncio.gather(*before, *after), PATIENCE)
        # The writer is not wedged: heartbeats go on landing, one after the other.
        for beat in range(3):
            await asyncio.wait_for(writer.write(puts=[(KEY, str(beat).encode())]), PATIENCE)
    for i in range(5):
        assert await value_of(store, f"cellmesh/v1/test/b{i}") == b"b"
        assert await value_of(store, f"cellmesh/v1/test/a{i}") == b"a"
    assert await value_of(store, "cellmesh/v1/test/poison") is None
    assert await value_of(store, KEY) == b"2"
    assert writer.stats.rejected_writes == 1
    if batched:
        assert writer.stats.rejected_batches >= 1, "the refused batch was split"


async def test_an_unreachable_etcd_is_retried_until_it_returns(
    store: EtcdStore, etcd: LocalEtcd
) -> None:
    writer = RecordWriter(store, cell="alpha")
    async with running(writer):
        await asyncio.to_thread(etcd.stop)
        pending = writer.submit(puts=[(KEY, b"late")])

        await wait_for(lambda: writer.stats.failures > 0, timeout=PATIENCE, what="a retry")
        assert not pending.done(), "an outage is retried, not reported to the caller"
        await asyncio.to_thread(etcd.start)
        await asyncio.wait_for(pending, 30)
    assert await value_of(store, KEY) == b"late"
    assert writer.stats.rejected_writes == 0
