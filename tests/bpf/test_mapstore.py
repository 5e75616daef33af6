"""`MapStore`: every store keeps the same contract, and `LbMaps` is one engine over any of them.

The contract is run against the in-memory store, the kernel's pinned maps (a loader instance of
small maps, so a full map is cheap to reach) and the faulty store wrapping each with no faults:
what `update`, `delete` and `items` do, what they count, and `MapFull` naming the map and its
capacity. Then the engine: the same diffs give the same maps and the same counts over every
store, `FaultyLbMaps` adds no bookkeeping of its own (it writes through the inner maps' store),
and random faults over the kernel's maps still converge.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bpf.fakemaps import FakeLbMaps, FaultyLbMaps, FaultyMapStore, MemoryMapStore
from bpf.layout import BACKENDS_MAP, IPPROTO_TCP, Lb4Backend, MapSizes, pack_backend_id
from bpf.lbmaps import LbMaps, LbMapsError, MapFull, MapStore
from bpf.lbstate import LbDiff, LbState, ServiceEntry
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedMapStore
from tests.bpf.test_lbmaps import be, datapath_invariant, fe, random_state

SMALL = MapSizes(services=16, backends=64, reverse_nat=16)
STORES = ["memory", "pinned", "faulty-memory", "faulty-pinned"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Iterator[MapStore]:
    """A store of SMALL maps: in memory or pinned, bare or wrapped by a faulty store (p=0)."""
    kind = str(request.param)
    loader: SockLbLoader | None = None
    base: MapStore
    if kind.endswith("pinned"):
        obj: Path = request.getfixturevalue("sock_lb_object")
        loader = SockLbLoader(
            object_path=obj, instance=f"test-{uuid.uuid4().hex[:10]}", sizes=SMALL
        )
    try:
        if loader is not None:
            loader.load()
            base = PinnedMapStore(loader.maps_dir)
        else:
            base = MemoryMapStore(sizes=SMALL)
        wrapped = FaultyMapStore(base, probability=0.0) if kind.startswith("faulty") else base
        try:
            yield wrapped
        finally:
            wrapped.close()
    finally:
        if loader is not None:
            loader.unpin()


def backend_items(ids: range) -> list[tuple[bytes, bytes]]:
    return [(pack_backend_id(b), be(b).pack()) for b in ids]


def test_every_store_is_a_map_store(store: MapStore) -> None:
    assert isinstance(store, MapStore)


def test_update_items_and_delete_keep_the_contract_and_count(store: MapStore) -> None:
    written = backend_items(range(1, 11))
    store.update(BACKENDS_MAP, written)
    assert sorted(store.items(BACKENDS_MAP)) == sorted(written)
    assert (store.stats.entries_written, store.stats.batch_calls) == (10, 1)
    # An overwrite replaces, it does not add.
    moved = [(pack_backend_id(1), Lb4Backend(IPv4Address("10.9.9.9"), 80, IPPROTO_TCP).pack())]
    store.update(BACKENDS_MAP, moved)
    assert len(store.items(BACKENDS_MAP)) == 10
    assert dict(store.items(BACKENDS_MAP))[pack_backend_id(1)] == moved[0][1]
    # Missing keys are fine, and only the entries that left count.
    store.delete(BACKENDS_MAP, [pack_backend_id(b) for b in (1, 42, 2, 43, 3)])
    assert {k for k, _ in store.items(BACKENDS_MAP)} == {pack_backend_id(b) for b in range(4, 11)}
    assert store.stats.entries_deleted == 3


def test_a_write_past_capacity_raises_map_full_and_an_overwrite_still_lands(
    store: MapStore,
) -> None:
    store.update(BACKENDS_MAP, backend_items(range(1, SMALL.backends + 1)))
    with pytest.raises(MapFull, match=r"cm_lb4_backends: map full \(64 entries\)") as caught:
        store.update(BACKENDS_MAP, backend_items(range(100, 101)))
    assert (caught.value.map_name, caught.value.capacity) == (BACKENDS_MAP, SMALL.backends)
    assert isinstance(caught.value, LbMapsError)
    assert len(store.items(BACKENDS_MAP)) == SMALL.backends
    other = Lb4Backend(IPv4Address("10.9.9.9"), 80, IPPROTO_TCP).pack()
    store.update(BACKENDS_MAP, [(pack_backend_id(5), other)])
    assert dict(store.items(BACKENDS_MAP))[pack_backend_id(5)] == other


def small_states() -> list[LbState]:
    """Three states within SMALL: grow, shrink and move slots, delete and add a service."""
    backends = {b: be(b, cell=1 + b % 2) for b in range(1, 9)}
    return [
        LbState({fe(1): ServiceEntry(1, (1, 2)), fe(2): ServiceEntry(2, (3, 4, 5))}, backends),
        LbState(
            {fe(1): ServiceEntry(1, (2, 6, 1)), fe(2): ServiceEntry(2, (5,))},
            {b: backends[b] for b in (1, 2, 5, 6)},
        ),
        LbState({fe(1): ServiceEntry(1, (6,)), fe(3): ServiceEntry(3, (7, 8))}, backends),
    ]


def test_the_engine_writes_the_same_maps_and_counts_over_every_store(store: MapStore) -> None:
    maps = LbMaps(store)
    reference = FakeLbMaps(sizes=SMALL)
    for desired in small_states():
        for m in (maps, reference):
            m.apply(LbDiff.between(m.landed, desired))
            assert m.landed == desired
        assert maps.dump() == reference.dump()
        assert maps.stats.entries_written == reference.stats.entries_written
        assert maps.stats.entries_deleted == reference.stats.entries_deleted
        assert maps.stats.deleted_in == reference.stats.deleted_in
    restarted = LbMaps(store)
    assert restarted.restore() == small_states()[-1]


def test_faulty_maps_write_through_the_inner_store_with_no_bookkeeping_of_their_own() -> None:
    inner = FakeLbMaps()
    faulty = FaultyLbMaps(inner, probability=0.0, seed=1)
    assert isinstance(faulty.store, FaultyMapStore)
    assert faulty.store.inner is inner.store
    state = small_states()[0]
    faulty.apply(LbDiff.between(LbState(), state))
    # One engine (the faulty one) wrote; the calls and entries are the inner store's.
    assert faulty.stats.entries_written == inner.stats.entries_written == 17
    assert faulty.stats.batch_calls == inner.stats.batch_calls > 0
    assert faulty.dump() == inner.dump()
    assert inner.landed == LbState()  # the inner engine was never asked to do anything
    faulty.probability = 1.0
    with pytest.raises(LbMapsError, match="injected fault"):
        faulty.apply(LbDiff(backends={9: be(9)}))
    assert faulty.faults == 1
    assert faulty.stats.failed_applies == 1


def test_random_faults_over_the_kernel_maps_converge(loader: SockLbLoader) -> None:
    loader.load()
    rng = random.Random(13)
    with LbMaps(FaultyMapStore(PinnedMapStore(loader.maps_dir), 0.3, seed=9)) as faulty:
        reference = FakeLbMaps()
        for _ in range(10):
            desired = random_state(rng, n_services=15, n_backends=30)
            for _attempt in range(100):
                try:
                    faulty.apply(LbDiff.between(faulty.landed, desired))
                    break
                except LbMapsError:
                    datapath_invariant(faulty)
            else:
                pytest.fail("did not converge in 100 attempts at p=0.3")
            reference.apply(LbDiff.between(reference.landed, desired))
            assert faulty.landed == desired
            assert faulty.dump() == reference.dump()
        assert isinstance(faulty.store, FaultyMapStore)
        assert faulty.store.faults > 5
        assert faulty.stats.failed_applies == faulty.store.faults
