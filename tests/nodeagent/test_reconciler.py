"""`Reconciler`: the maps converge to `DesiredLb` — through failures, restarts and drift."""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from ipaddress import IPv4Address, ip_address

import pytest

from bpf.fakemaps import FakeLbMaps, FaultyLbMaps, MemoryMapStore
from bpf.layout import (
    BACKENDS_MAP,
    IPPROTO_TCP,
    MASTER_SLOT,
    REVERSE_NAT_MAP,
    SERVICES_MAP,
    Lb4Key,
    Lb4ReverseNat,
    Lb4Service,
    pack_backend_id,
    pack_rev_nat_id,
)
from bpf.lbmaps import LbMaps, LbMapsError
from bpf.lbstate import Frontend, LbDiff, LbState
from meshcore.backoff import BACKOFF as SHARED_BACKOFF
from meshcore.lbpolicy import (
    BackendState,
    CellSource,
    MergedBackend,
    MergedFrontend,
    MergedService,
    ServiceRef,
    merge_service,
)
from meshcore.model import Affinity, Endpoint, EndpointPort, Service
from meshcore.model import Frontend as RecordFrontend
from nodeagent.desired import DesiredLb
from nodeagent.reconciler import Reconciler

CART = ServiceRef("shop", "cart")
PAY = ServiceRef("shop", "pay")
VIPS = {CART: "10.96.0.10", PAY: "10.96.0.11"}
BACKOFF = (1.0, 2.0, 4.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def vip_of(ref: ServiceRef) -> str:
    """CART and PAY have fixed VIPs; `svc<n>` has 10.96.1.<n+1>."""
    return VIPS.get(ref) or f"10.96.1.{int(ref.name.removeprefix('svc')) + 1}"


def backend(address: str, cell_id: int = 1) -> MergedBackend:
    return MergedBackend(
        cell="home" if cell_id == 1 else f"cell{cell_id}",
        cell_id=cell_id,
        address=ip_address(address),
        port=8080,
        protocol="TCP",
        local=cell_id == 1,
        state=BackendState.ACTIVE,
        stale=False,
        updated_at=0.0,
    )


def merged(
    ref: ServiceRef, addresses: Sequence[str], ports: Sequence[int] = (80,)
) -> MergedService:
    return MergedService(
        ref=ref,
        affinity=Affinity.NONE,
        global_=True,
        frontends=tuple(
            MergedFrontend(
                frontend=RecordFrontend(vip=ip_address(vip_of(ref)), port=port),
                backends=tuple(backend(a) for a in addresses),
                decisions=(),
            )
            for port in ports
        ),
        warnings=(),
    )


def fe(ref: ServiceRef, port: int = 80) -> Frontend:
    return Frontend(IPv4Address(vip_of(ref)), port, IPPROTO_TCP)


def fresh_dump(state: LbState) -> str:
    """What clean maps holding exactly `state` look like."""
    maps = FakeLbMaps()
    maps.apply(LbDiff.between(LbState(), state))
    return maps.dump()


def assert_datapath_valid(maps: LbMaps) -> None:
    """Every slot 1..count of every master names an existing backend."""
    contents = maps.contents()
    for svc in contents.services:
        if svc.count is None:
            continue  # slots without a master: the datapath never reads them
        for slot in range(1, svc.count + 1):
            bid = svc.slots.get(slot)
            assert bid is not None, f"{svc.frontend}: slot {slot} of {svc.count} missing"
            assert bid in contents.backends, f"{svc.frontend}: slot {slot} -> missing backend {bid}"


def setup(
    maps: LbMaps | None = None, *, deletes: bool = True
) -> tuple[LbMaps, DesiredLb, Reconciler, Clock]:
    maps = maps if maps is not None else FakeLbMaps()
    desired = DesiredLb()
    clock = Clock()
    reconciler = Reconciler(maps, desired, backoff=BACKOFF, clock=clock)
    if deletes:
        reconciler.allow_deletes()
    return maps, desired, reconciler, clock


def address_of(maps: LbMaps, bid: int) -> str:
    return str(maps.landed.backends[bid].address)


def addresses(maps: LbMaps, frontend: Frontend) -> list[str]:
    return [address_of(maps, b) for b in maps.landed.services[frontend].backend_ids]


# --- plain convergence ------------------------------------------------------------------------


def test_sync_makes_the_maps_hold_the_desired_state() -> None:
    maps, desired, reconciler, _ = setup()
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.2", "10.1.0.3"], ports=(80, 443)))
    desired.set_service(PAY, merged(PAY, ["10.1.0.3", "10.1.0.4"]))
    result = reconciler.sync()
    assert result.failed == 0
    assert result.frontends == {fe(CART), fe(CART, 443), fe(PAY)}
    assert maps.landed == desired.wanted
    assert maps.dump() == fresh_dump(desired.wanted)
    assert reconciler.pending == 0
    # Changes: one backend goes, one comes, a service goes.
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.3", "10.1.0.5"], ports=(80, 443)))
    desired.set_service(PAY, None)
    reconciler.sync()
    assert maps.landed == desired.wanted
    assert maps.dump() == fresh_dump(desired.wanted)
    # Converged: another sync writes nothing.
    written = maps.stats.entries_written
    assert reconciler.sync().applied == 0
    assert maps.stats.entries_written == written


def test_sync_with_records_through_merge_service() -> None:
    service = Service(
        cell="home",
        namespace=CART.namespace,
        name=CART.name,
        frontends=[RecordFrontend(vip=ip_address(VIPS[CART]), port=80)],
        global_=False,
        shared=True,
        affinity=Affinity.NONE,
    )
    endpoints = {
        a: Endpoint(
            cell="home",
            namespace=CART.namespace,
            service=CART.name,
            address=ip_address(a),
            ports=[EndpointPort(port=8080)],
        )
        for a in ("10.1.0.1", "10.1.0.2")
    }
    source = CellSource(cell="home", cell_id=1, local=True, service=service, endpoints=endpoints)
    maps, desired, reconciler, _ = setup()
    desired.set_service(CART, merge_service(CART, {"home": source}))
    reconciler.sync()
    assert addresses(maps, fe(CART)) == ["10.1.0.1", "10.1.0.2"]
    assert maps.landed.backends[maps.landed.services[fe(CART)].backend_ids[0]].port == 8080


def test_removing_a_backend_in_the_middle_writes_few_entries() -> None:
    maps, desired, reconciler, _ = setup()
    many = [f"10.1.0.{n}" for n in range(1, 21)]
    desired.set_service(CART, merged(CART, many))
    reconciler.sync()
    written, deleted = maps.stats.entries_written, maps.stats.entries_deleted
    desired.set_service(CART, merged(CART, [a for a in many if a != "10.1.0.7"]))
    reconciler.sync()
    assert maps.landed == desired.wanted
    assert maps.stats.entries_written - written == 2  # one slot moved in, the master's count
    assert maps.stats.entries_deleted - deleted == 2  # the old last slot, the backend


# --- start-up: restore, and deletes gated until allow_deletes ---------------------------------


def first_agent() -> MemoryMapStore:
    """Maps as a previous agent left them: CART over .1 .2 .3, PAY over .4."""
    maps, desired, reconciler, _ = setup()
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.2", "10.1.0.3"]))
    desired.set_service(PAY, merged(PAY, ["10.1.0.4"]))
    reconciler.sync()
    assert isinstance(maps, FakeLbMaps)
    return maps.store


def test_before_allow_deletes_nothing_is_removed_after_a_restore() -> None:
    store = first_agent()
    before = FakeLbMaps(store).dump()
    maps, desired, reconciler, _ = setup(FakeLbMaps(store), deletes=False)
    restored = reconciler.restore().copy()
    # Sources come back partly: CART lost .2 and gained .9; PAY is not (yet) listed.
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.3", "10.1.0.9"]))
    reconciler.sync()
    assert addresses(maps, fe(CART)) == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.9"]
    assert maps.landed.services[fe(PAY)] == restored.services[fe(PAY)]
    assert set(restored.backends) <= set(maps.landed.backends)
    assert maps.stats.entries_deleted == 0
    assert_datapath_valid(maps)
    assert before != maps.dump()
    # Deletes allowed: converges exactly.
    reconciler.allow_deletes()
    reconciler.sync()
    assert maps.landed == desired.wanted
    assert maps.dump() == fresh_dump(desired.wanted)
    assert addresses(maps, fe(CART)) == ["10.1.0.1", "10.1.0.9", "10.1.0.3"]  # .9 took .2's slot
    assert reconciler.pending == 0


def test_a_removed_service_is_kept_until_deletes_are_allowed() -> None:
    maps, desired, reconciler, _ = setup(deletes=False)
    desired.set_service(CART, merged(CART, ["10.1.0.1"]))
    reconciler.sync()
    desired.set_service(CART, None)
    reconciler.sync()
    assert fe(CART) in maps.landed.services
    assert reconciler.stats.deferred_deletes == 1
    reconciler.allow_deletes()
    reconciler.sync()
    assert maps.landed == LbState()
    assert maps.dump() == ""


def test_a_restart_writes_nothing_when_nothing_changed() -> None:
    maps, desired, reconciler, _ = setup()
    cart = [f"10.1.0.{n}" for n in range(1, 8)]
    desired.set_service(CART, merged(CART, cart, ports=(80, 443)))
    desired.set_service(PAY, merged(PAY, ["10.1.0.3", "10.1.0.20"]))
    reconciler.sync()
    # Churn, so that slot order and ids are no longer what a fresh agent would pick.
    cart = [a for a in cart if a not in ("10.1.0.2", "10.1.0.5")] + ["10.1.0.30"]
    desired.set_service(CART, merged(CART, cart, ports=(80, 443)))
    reconciler.sync()
    assert isinstance(maps, FakeLbMaps)
    dump = maps.dump()

    again, desired2, reconciler2, _ = setup(FakeLbMaps(maps.store), deletes=False)
    reconciler2.restore()
    desired2.set_service(PAY, merged(PAY, ["10.1.0.3", "10.1.0.20"]))
    desired2.set_service(CART, merged(CART, list(reversed(cart)), ports=(80, 443)))
    reconciler2.sync()
    reconciler2.allow_deletes()
    reconciler2.sync()
    reconciler2.full_pass(reread=True)
    assert again.stats.entries_written == 0
    assert again.stats.entries_deleted == 0
    assert again.dump() == dump
    assert again.landed == desired2.wanted


# --- failures: per-key retry with backoff ------------------------------------------------------


def test_failed_keys_wait_out_their_backoff() -> None:
    inner = FakeLbMaps()
    faulty = FaultyLbMaps(inner, probability=1.0, seed=1)
    maps, desired, reconciler, clock = setup(faulty)
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.2"]))
    result = reconciler.sync()
    assert result.failed > 0
    assert reconciler.pending > 0
    assert reconciler.stats.failed > 0
    # Not due yet: nothing is attempted.
    faults = faulty.faults
    reconciler.sync()
    clock.advance(BACKOFF[0] / 2)
    reconciler.sync()
    assert faulty.faults == faults
    # Due: attempted again, fails again; the next wait is longer.
    clock.advance(BACKOFF[0])
    reconciler.sync()
    assert faulty.faults > faults
    faults = faulty.faults
    clock.advance(BACKOFF[0] + 0.1)
    reconciler.sync()
    assert faulty.faults == faults
    # The maps heal; once due, everything lands.
    faulty.probability = 0.0
    clock.advance(max(BACKOFF))
    reconciler.sync()
    assert maps.landed == desired.wanted
    assert reconciler.pending == 0
    assert_datapath_valid(inner)


def test_by_default_a_failing_key_waits_the_shared_backoff_delays_without_jitter() -> None:
    # One table of delays for every retry in the agent, not a copy of it.
    assert inspect.signature(Reconciler).parameters["backoff"].default is SHARED_BACKOFF
    faulty = FaultyLbMaps(FakeLbMaps(), probability=1.0, seed=3)
    desired, clock = DesiredLb(), Clock()
    reconciler = Reconciler(faulty, desired, clock=clock)
    reconciler.allow_deletes()
    desired.set_service(CART, merged(CART, ["10.1.0.1"]))
    reconciler.sync()
    for delay in (*SHARED_BACKOFF, SHARED_BACKOFF[-1]):  # the last delay repeats
        failed_at, faults = clock.now, faulty.faults
        clock.now = failed_at + delay - 0.001
        reconciler.sync()
        assert faulty.faults == faults, f"retried before its {delay} s"
        clock.now = failed_at + delay + 0.001  # jitter (up to +50 %) would not be due yet
        reconciler.sync()
        assert faulty.faults > faults, f"not retried after its {delay} s"
    assert reconciler.pending > 0


def test_a_retried_key_that_no_longer_needs_a_write_is_dropped() -> None:
    faulty = FaultyLbMaps(FakeLbMaps(), probability=1.0, seed=2)
    maps, desired, reconciler, clock = setup(faulty)
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.2"]))
    reconciler.sync()
    assert reconciler.pending > 0
    desired.set_service(CART, None)  # gone before it ever landed
    faulty.probability = 0.0
    clock.advance(max(BACKOFF))
    reconciler.sync()
    reconciler.sync()
    assert reconciler.pending == 0
    assert maps.landed == LbState()
    assert faulty.contents().backends == {}


@pytest.mark.parametrize("seed", range(8))
def test_random_failures_converge_and_the_datapath_stays_valid(seed: int) -> None:
    rng = random.Random(seed)
    inner = FakeLbMaps()
    faulty = FaultyLbMaps(inner, probability=0.3, seed=seed)
    maps, desired, reconciler, clock = setup(faulty)
    pool = [f"10.1.{n // 200}.{n % 200 + 1}" for n in range(40)]
    refs = [ServiceRef("shop", f"svc{n}") for n in range(6)]
    for _round in range(15):
        for ref in rng.sample(refs, rng.randrange(1, 4)):
            if rng.random() < 0.2:
                desired.set_service(ref, None)
            else:
                ports = (80, 443) if rng.random() < 0.3 else (80,)
                desired.set_service(ref, merged(ref, rng.sample(pool, rng.randrange(0, 9)), ports))
        for _attempt in range(60):
            reconciler.sync()
            assert_datapath_valid(inner)
            if maps.landed == desired.wanted and reconciler.pending == 0:
                break
            clock.advance(max(BACKOFF) + 0.1)
        assert maps.landed == desired.wanted
        assert reconciler.pending == 0
    assert faulty.faults > 0
    # Maps healthy again: one re-reading pass leaves exactly the desired entries.
    faulty.probability = 0.0
    reconciler.full_pass(reread=True)
    assert inner.dump() == fresh_dump(desired.wanted)


class MasterWritesFail(MemoryMapStore):
    """A store whose master (slot 0) writes fail while `failing`: services end half-written."""

    failing = False

    def update(self, map_name: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        if (
            self.failing
            and map_name == SERVICES_MAP
            and any(Lb4Key.unpack(key).slot == MASTER_SLOT for key, _ in items)
        ):
            raise LbMapsError("injected: master write failed")
        super().update(map_name, items)


def test_a_half_written_service_that_is_no_longer_wanted_is_deleted() -> None:
    store = MasterWritesFail()
    maps = LbMaps(store)
    _, desired, reconciler, clock = setup(maps)
    desired.set_service(CART, merged(CART, ["10.1.0.1"]))
    reconciler.sync()
    # The next write lands the new backends and slots, but not the master.
    store.failing = True
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.2", "10.1.0.3"]))
    assert reconciler.sync().failed > 0
    assert fe(CART) not in maps.landed.services
    assert_datapath_valid(maps)
    # The service goes before its write ever landed; the maps heal.
    store.failing = False
    desired.set_service(CART, None)
    for _ in range(3):
        reconciler.sync()
        clock.advance(max(BACKOFF) + 0.1)
    assert maps.landed == LbState()
    assert reconciler.pending == 0
    assert_datapath_valid(maps)
    assert maps.contents().services == []
    assert maps.contents().backends == {}
    reconciler.full_pass(reread=True)  # sweeps a reverse-NAT entry LbMaps lost track of
    assert maps.dump() == ""


# --- drift: the full pass ---------------------------------------------------------------------


def drifted() -> tuple[FakeLbMaps, DesiredLb, Reconciler]:
    maps, desired, reconciler, _ = setup()
    desired.set_service(CART, merged(CART, ["10.1.0.1", "10.1.0.2", "10.1.0.3"]))
    desired.set_service(PAY, merged(PAY, ["10.1.0.4", "10.1.0.5"]))
    reconciler.sync()
    assert isinstance(maps, FakeLbMaps)
    return maps, desired, reconciler


def test_full_pass_with_reread_restores_a_deleted_backend() -> None:
    maps, desired, reconciler = drifted()
    bid = maps.landed.services[fe(CART)].backend_ids[1]
    del maps.store[BACKENDS_MAP][pack_backend_id(bid)]
    assert reconciler.full_pass().applied == 0  # the view does not know
    result = reconciler.full_pass(reread=True)
    assert result.applied > 0
    assert reconciler.stats.repaired > 0
    assert maps.dump() == fresh_dump(desired.wanted)


def test_full_pass_with_reread_repairs_a_changed_slot() -> None:
    maps, desired, reconciler = drifted()
    other = maps.landed.services[fe(PAY)].backend_ids[0]
    maps.store[SERVICES_MAP][fe(CART).key(2).pack()] = Lb4Service(other, 0, 0).pack()
    reconciler.full_pass(reread=True)
    assert maps.dump() == fresh_dump(desired.wanted)
    assert maps.landed == desired.wanted


def test_full_pass_with_reread_removes_leftover_entries() -> None:
    maps, desired, reconciler = drifted()
    services = maps.store[SERVICES_MAP]
    rev = maps.landed.services[fe(CART)].rev_nat_id
    bid = maps.landed.services[fe(CART)].backend_ids[0]
    services[fe(CART).key(7).pack()] = Lb4Service(bid, 0, 0).pack()  # past the count
    stray = Frontend(IPv4Address("10.96.9.9"), 80, IPPROTO_TCP)
    services[stray.key(1).pack()] = Lb4Service(bid, 0, 0).pack()  # slot without a master
    maps.store[REVERSE_NAT_MAP][pack_rev_nat_id(rev + 100)] = Lb4ReverseNat(
        IPv4Address("10.96.9.9"), 80
    ).pack()
    reconciler.full_pass(reread=True)
    assert maps.dump() == fresh_dump(desired.wanted)


def test_full_pass_with_reread_removes_an_unwanted_service_with_a_broken_slot() -> None:
    maps, desired, reconciler = drifted()
    stray = Frontend(IPv4Address("10.96.9.9"), 80, IPPROTO_TCP)
    services = maps.store[SERVICES_MAP]
    services[stray.key().pack()] = Lb4Service(0, 1, 999).pack()
    services[stray.key(1).pack()] = Lb4Service(12345, 0, 0).pack()  # no such backend
    reconciler.full_pass(reread=True)
    assert maps.dump() == fresh_dump(desired.wanted)
    assert_datapath_valid(maps)
