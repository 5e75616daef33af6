"""`LbMaps`: the same diffs give the same maps on the fake and the kernel, a bad diff never
reaches the maps, a restart restores the view, and random write failures still converge."""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bpf.fakemaps import FakeLbMaps, FaultyLbMaps
from bpf.layout import (
    BACKENDS_MAP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SERVICES_MAP,
    Lb4Backend,
    Lb4Service,
    MapSizes,
    pack_backend_id,
)
from bpf.lbmaps import InvalidDiff, LbMaps, LbMapsError, MapFull
from bpf.lbstate import Frontend, LbDiff, LbState, ServiceEntry
from bpf.loader import LoaderError, SockLbLoader, pin_root
from bpf.pinned_maps import PinnedLbMaps


def fe(n: int, port: int = 80, proto: int = IPPROTO_TCP) -> Frontend:
    return Frontend(IPv4Address(f"172.20.{n >> 8}.{n & 255}"), port, proto)


def be(n: int, cell: int = 1, proto: int = IPPROTO_TCP) -> Lb4Backend:
    return Lb4Backend(IPv4Address(f"10.{cell}.{n >> 8}.{n & 255}"), 8080, proto, cell_id=cell)


def full(state: LbState) -> LbDiff:
    return LbDiff.between(LbState(), state)


@pytest.fixture
def maps_dir(loader: SockLbLoader) -> Path:
    loader.load()
    return loader.maps_dir


@pytest.fixture
def real(maps_dir: Path) -> Iterator[PinnedLbMaps]:
    with PinnedLbMaps(maps_dir) as maps:
        yield maps


GOLDEN = """\
backend 1 10.1.0.1:8080/tcp cell=1 flags=0x00
backend 2 10.2.0.2:8080/tcp cell=2 flags=0x00
backend 3 10.2.0.3:53/udp cell=2 flags=0x00
revnat 1 172.20.0.1:80
revnat 2 172.20.0.2:53
revnat 3 172.20.0.3:80
service 172.20.0.1:80/tcp rev_nat=1 flags=0x00 count=2 backends=[2,1]
service 172.20.0.2:53/udp rev_nat=2 flags=0x00 count=1 backends=[3]
service 172.20.0.3:80/tcp rev_nat=3 flags=0x00 count=0 backends=[]
"""


def golden_state() -> LbState:
    return LbState(
        services={
            fe(3): ServiceEntry(3, ()),
            fe(1): ServiceEntry(1, (2, 1)),
            fe(2, 53, IPPROTO_UDP): ServiceEntry(2, (3,)),
        },
        backends={
            2: be(2, cell=2),
            1: be(1),
            3: Lb4Backend(IPv4Address("10.2.0.3"), 53, IPPROTO_UDP, cell_id=2),
        },
    )


def test_dump_is_canonical_and_matches_the_golden_text(real: PinnedLbMaps) -> None:
    fake = FakeLbMaps()
    for maps in (fake, real):
        maps.apply(full(golden_state()))
    assert fake.dump() == GOLDEN
    assert real.dump() == GOLDEN


def random_state(rng: random.Random, n_services: int = 30, n_backends: int = 60) -> LbState:
    backends = {b: be(b, cell=rng.choice((1, 2, 3))) for b in rng.sample(range(1, 200), n_backends)}
    ids = sorted(backends)
    services = {}
    for s in rng.sample(range(1, 100), n_services):
        k = rng.choice((0, 1, 2, 5, 12))
        services[fe(s)] = ServiceEntry(s, tuple(rng.sample(ids, k)))
    return LbState(services, backends)


def test_fake_and_kernel_agree_over_random_diffs(real: PinnedLbMaps) -> None:
    rng = random.Random(7)
    fake = FakeLbMaps()
    for _ in range(25):
        desired = random_state(rng)
        for maps in (fake, real):
            maps.apply(LbDiff.between(maps.landed, desired))
            assert maps.landed == desired
        assert real.dump() == fake.dump()
    # Converged: nothing left to write, and nothing is written.
    written = real.stats.entries_written
    real.apply(LbDiff.between(real.landed, desired))
    assert real.stats.entries_written == written


def test_restore_after_a_restart_gives_back_the_same_view(maps_dir: Path) -> None:
    desired = random_state(random.Random(3))
    with PinnedLbMaps(maps_dir) as first:
        first.apply(full(desired))
        dump = first.dump()
    with PinnedLbMaps(maps_dir) as second:
        assert second.restore() == desired
        assert second.dump() == dump
        # The restored view diffs to nothing against the same desired state.
        assert len(LbDiff.between(second.landed, desired)) == 0


def test_restore_queues_leftovers_of_an_interrupted_write_and_deletes_them_later() -> None:
    fake = FakeLbMaps()
    fake.apply(full(golden_state()))
    services = fake.store[SERVICES_MAP]
    # A stale slot past the count, slots of a frontend without a master, and a service whose
    # slot 2 points to a backend that does not exist.
    services[fe(1).key(5).pack()] = Lb4Service(1, 0, 0).pack()
    services[fe(9).key(1).pack()] = Lb4Service(1, 0, 0).pack()
    services[fe(8).key().pack()] = Lb4Service(0, 2, 8).pack()
    services[fe(8).key(1).pack()] = Lb4Service(1, 0, 0).pack()
    services[fe(8).key(2).pack()] = Lb4Service(77, 0, 0).pack()
    before = dict(services)

    restarted = FakeLbMaps(fake.store)
    view = restarted.restore()
    assert services == before  # restore itself deletes nothing
    assert fe(8) not in view.services  # incomplete: left for the next diff to rewrite
    assert view.services == golden_state().services
    assert "stale_slots=5:1" in restarted.dump()

    restarted.apply(LbDiff(services={fe(8): ServiceEntry(8, (2,)), fe(9): None}))
    dump = restarted.dump()
    assert "stale_slots" not in dump
    assert "master=missing" not in dump
    assert "service 172.20.0.8:80/tcp rev_nat=8 flags=0x00 count=1 backends=[2]" in dump


BAD_DIFFS = [
    pytest.param(LbDiff(backends={0: be(1)}), "backend 0: id out of range", id="backend-id-0"),
    pytest.param(
        LbDiff(backends={5: Lb4Backend(IPv4Address("10.0.0.1"), 0, IPPROTO_TCP)}),
        "port 0 out of range",
        id="backend-port-0",
    ),
    pytest.param(
        LbDiff(backends={5: Lb4Backend(IPv4Address("10.0.0.1"), 80, 1)}),
        "protocol 1 is not TCP or UDP",
        id="backend-icmp",
    ),
    pytest.param(
        LbDiff(backends={5: Lb4Backend(IPv4Address("10.0.0.1"), 80, IPPROTO_TCP, cell_id=256)}),
        "cell id 256 out of range",
        id="cell-id-256",
    ),
    pytest.param(
        LbDiff(backends={5: Lb4Backend(IPv4Address("0.0.0.0"), 80, IPPROTO_TCP)}),
        "address 0.0.0.0",
        id="backend-unspecified",
    ),
    pytest.param(
        LbDiff(services={fe(7): ServiceEntry(7, (1, 99))}),
        "service 172.20.0.7:80/tcp: backend 99 does not exist",
        id="unknown-backend",
    ),
    pytest.param(
        LbDiff(services={fe(7): ServiceEntry(0, (1,))}),
        "rev_nat_id 0 out of range",
        id="rev-nat-0",
    ),
    pytest.param(
        LbDiff(services={fe(7): ServiceEntry(1, (1,))}),
        "rev_nat_id 1 is used by service 172.20.0.1:80/tcp",
        id="rev-nat-taken",
    ),
    pytest.param(
        LbDiff(services={fe(7): ServiceEntry(7, (1,)), fe(6): ServiceEntry(7, (1,))}),
        "also used by",
        id="rev-nat-twice",
    ),
    pytest.param(
        LbDiff(services={Frontend(IPv4Address("172.20.0.7"), 0, IPPROTO_TCP): None}),
        "port out of range",
        id="frontend-port-0",
    ),
    pytest.param(
        LbDiff(backends={1: None}),
        "backend 1: deleted while a service still uses it",
        id="delete-used-backend",
    ),
    pytest.param(
        LbDiff(services={fe(7): ServiceEntry(7, (1,))}, backends={1: None}),
        "backend 1",
        id="new-service-uses-deleted-backend",
    ),
]


@pytest.mark.parametrize(("diff", "message"), BAD_DIFFS)
def test_a_bad_diff_is_refused_whole_and_never_reaches_the_maps(
    real: PinnedLbMaps, diff: LbDiff, message: str
) -> None:
    real.apply(full(golden_state()))
    before, view, written = real.dump(), real.landed.copy(), real.stats.entries_written
    # Each bad diff also carries a good part: nothing of it may land either.
    diff.backends[150] = be(150)
    with pytest.raises(InvalidDiff, match=message.replace("(", r"\(")):
        real.apply(diff)
    assert real.dump() == before
    assert real.landed == view
    assert real.stats.entries_written == written


def test_deleting_a_backend_together_with_its_last_user_is_fine() -> None:
    fake = FakeLbMaps()
    fake.apply(full(golden_state()))
    fake.apply(LbDiff(services={fe(2, 53, IPPROTO_UDP): None}, backends={3: None}))
    assert 3 not in fake.landed.backends
    assert "10.2.0.3" not in fake.dump()
    assert "revnat 2 " not in fake.dump()


def datapath_invariant(maps: LbMaps) -> None:
    """What a concurrent connect() could see: every slot 1..count of every master names an
    existing backend, so the datapath never meets a dangling id."""
    contents = maps.contents()
    for svc in contents.services:
        if svc.count is None:
            continue
        for bid in svc.backend_ids:
            assert bid in contents.backends, f"{svc.frontend}: slot -> missing backend {bid}"


def test_random_failures_converge_and_never_expose_a_dangling_backend() -> None:
    rng = random.Random(11)
    inner = FakeLbMaps()
    faulty = FaultyLbMaps(inner, probability=0.3, seed=5)
    reference = FakeLbMaps()
    for _ in range(30):
        desired = random_state(rng, n_services=20, n_backends=40)
        for _attempt in range(100):
            try:
                faulty.apply(LbDiff.between(faulty.landed, desired))
                break
            except LbMapsError:
                datapath_invariant(faulty)
        else:
            pytest.fail("did not converge in 100 attempts at p=0.3")
        datapath_invariant(faulty)
        reference.apply(LbDiff.between(reference.landed, desired))
        assert faulty.landed == desired
        assert faulty.dump() == reference.dump()
    assert faulty.faults > 20  # the faults did happen
    assert faulty.stats.failed_applies == faulty.faults


def test_large_apply_uses_batch_syscalls(real: PinnedLbMaps) -> None:
    """100k backends / 10k services: 220k entries in a few dozen syscalls, none per entry."""
    backends = {b: be(b % 60000 + 1, cell=1 + b % 200) for b in range(1, 100_001)}
    services = {
        fe(s): ServiceEntry(s, tuple(range((s - 1) * 10 + 1, s * 10 + 1))) for s in range(1, 10_001)
    }
    real.apply(LbDiff(backends=dict(backends), services=dict(services)))
    assert real.stats.entries_written == 100_000 + 10_000 * 11 + 10_000
    assert real.stats.single_calls == 0
    assert real.stats.batch_calls <= 40
    assert real.restore().services == services


def test_kernel_delete_batch_skips_missing_keys(real: PinnedLbMaps) -> None:
    real.apply(LbDiff(backends={1: be(1), 2: be(2), 3: be(3)}))
    keys = [pack_backend_id(b) for b in (1, 42, 2, 43, 3)]
    real.store.delete(BACKENDS_MAP, keys)
    assert real.contents().backends == {}
    assert real.stats.entries_deleted == 3


def test_unbatched_mode_writes_the_same_maps(maps_dir: Path) -> None:
    desired = random_state(random.Random(5))
    with PinnedLbMaps(maps_dir, batch=False) as single:
        single.apply(full(desired))
        assert single.stats.batch_calls == 0
        assert single.stats.single_calls == single.stats.entries_written
        fake = FakeLbMaps()
        fake.apply(full(desired))
        assert single.dump() == fake.dump()


def test_stale_pins_of_another_layout_are_refused() -> None:
    maps_dir = pin_root(f"test-{uuid.uuid4().hex[:10]}") / "maps"
    maps_dir.mkdir(parents=True)
    try:
        subprocess.run(
            ["bpftool", "map", "create", str(maps_dir / SERVICES_MAP), "type", "hash",
             "key", "8", "value", "12", "entries", "16", "name", SERVICES_MAP],
            check=True, capture_output=True,
        )  # fmt: skip
        with pytest.raises(LbMapsError, match=r"do not match this version"):
            PinnedLbMaps(maps_dir)
        with pytest.raises(LbMapsError, match=r"no pinned map"):
            PinnedLbMaps(maps_dir.parent / "nothing")
    finally:
        for pin in maps_dir.iterdir():
            pin.unlink()
        maps_dir.rmdir()
        maps_dir.parent.rmdir()
        if not any(maps_dir.parent.parent.iterdir()):
            maps_dir.parent.parent.rmdir()


def test_a_full_map_is_an_error_not_a_crash() -> None:
    fake = FakeLbMaps(sizes=MapSizes.from_lb_map_max(64))
    too_many = {b: be(b) for b in range(1, 66)}
    with pytest.raises(MapFull, match="map full") as caught:
        fake.apply(LbDiff(backends=dict(too_many)))
    assert (caught.value.map_name, caught.value.capacity) == (BACKENDS_MAP, 64)
    assert fake.landed.backends == {}


def test_the_default_maps_hold_the_scale_test() -> None:
    # 250 000 endpoints in 25 000 services of 10: 275 000 service entries, 250 000 backends.
    sizes = MapSizes()
    assert sizes.services >= 2 * 275_000 * 0.9
    assert sizes.backends >= 250_000
    assert sizes.reverse_nat >= 25_000


def test_a_full_kernel_map_raises_map_full_and_keeps_what_it_held(
    sized_loader: SockLbLoader,
) -> None:
    with PinnedLbMaps(sized_loader.maps_dir, sizes=SMALL) as real:
        assert real.capacity[SERVICES_MAP] == SMALL.services
        first = LbState(
            services={fe(n): ServiceEntry(n, (2 * n - 1, 2 * n)) for n in range(1, 6)},
            backends={b: be(b) for b in range(1, 11)},
        )
        real.apply(full(first))  # 15 of the 16 service entries
        before = real.dump()
        grown = LbState(
            services={**first.services, fe(1): ServiceEntry(1, (1, 2, 11))},
            backends={**first.backends, 11: be(11)},
        )
        real.apply(LbDiff.between(first, grown))  # slot 3 of fe(1): the 16th entry
        with pytest.raises(MapFull, match=r"cm_lb4_services: map full \(16 entries\)"):
            real.apply(
                LbDiff(services={fe(6): ServiceEntry(6, (1,))})  # two more entries
            )
        after = real.dump()
        # Nothing that was there is gone: every line of before is still in the maps.
        assert set(before.splitlines()) - set(after.splitlines()) <= {
            "service 172.20.0.1:80/tcp rev_nat=1 flags=0x00 count=2 backends=[1,2]"
        }
        assert "service 172.20.0.1:80/tcp rev_nat=1 flags=0x00 count=3 backends=[1,2,11]" in after


SMALL = MapSizes(services=16, backends=64, reverse_nat=16)


@pytest.fixture
def sized_loader(sock_lb_object: Path) -> Iterator[SockLbLoader]:
    loader = SockLbLoader(
        object_path=sock_lb_object, instance=f"test-{uuid.uuid4().hex[:10]}", sizes=SMALL
    )
    try:
        loader.load()
        yield loader
    finally:
        loader.unpin()


def test_pinned_maps_of_another_size_are_refused_with_what_to_do(
    sized_loader: SockLbLoader, sock_lb_object: Path
) -> None:
    sized_loader.close()
    other = SockLbLoader(
        object_path=sock_lb_object,
        instance=sized_loader.instance,
        sizes=MapSizes.from_lb_map_max(128),
    )
    with pytest.raises(LoaderError) as caught:
        other.load()
    message = str(caught.value)
    assert "holds 16 entries at most" in message
    assert "--bpf-lb-map-max 16" in message
    assert f"rm -r {sized_loader.root}" in message
    # The pinned datapath is left as it was, and the same size still loads.
    with PinnedLbMaps(sized_loader.maps_dir) as real:
        assert real.capacity[SERVICES_MAP] == 16
    again = SockLbLoader(object_path=sock_lb_object, instance=sized_loader.instance, sizes=SMALL)
    again.load()
    again.close()
