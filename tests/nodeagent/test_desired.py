"""`DesiredLb`: merged services → LB entries, incrementally; stable ids and slot order."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, ip_address

import pytest

from bpf.layout import IPPROTO_TCP, IPPROTO_UDP, Lb4Backend
from bpf.lbstate import Frontend, LbDiff, LbState, ServiceEntry
from meshcore.lbpolicy import (
    BackendState,
    MergedBackend,
    MergedFrontend,
    MergedService,
    ServiceRef,
)
from meshcore.model import Affinity, Node
from meshcore.model import Frontend as RecordFrontend
from nodeagent.desired import DesiredLb, IdsExhausted, _Ids, routes_for_nodes, stable_order

CART = ServiceRef("shop", "cart")
PAY = ServiceRef("shop", "pay")
VIP = "10.96.0.10"

FeSpec = tuple[str, int, str]  # vip, port, protocol


def backend(
    address: str, *, cell: str = "home", cell_id: int = 1, port: int = 8080, protocol: str = "TCP"
) -> MergedBackend:
    return MergedBackend(
        cell=cell,
        cell_id=cell_id,
        address=ip_address(address),
        port=port,
        protocol=protocol,
        local=cell == "home",
        state=BackendState.ACTIVE,
        stale=False,
        updated_at=0.0,
    )


def merged(ref: ServiceRef, frontends: Mapping[FeSpec, Sequence[MergedBackend]]) -> MergedService:
    return MergedService(
        ref=ref,
        affinity=Affinity.NONE,
        global_=True,
        frontends=tuple(
            MergedFrontend(
                frontend=RecordFrontend(vip=ip_address(vip), port=port, protocol=proto),
                backends=tuple(backends),
                decisions=(),
            )
            for (vip, port, proto), backends in frontends.items()
        ),
        warnings=(),
    )


def simple(ref: ServiceRef, addresses: Sequence[str], vip: str = VIP) -> MergedService:
    return merged(ref, {(vip, 80, "TCP"): [backend(a) for a in addresses]})


def fe(vip: str = VIP, port: int = 80, proto: int = IPPROTO_TCP) -> Frontend:
    return Frontend(IPv4Address(vip), port, proto)


def ids_by_address(lb: DesiredLb) -> dict[str, int]:
    return {str(be.address): bid for bid, be in lb.wanted.backends.items()}


def addresses_of(lb: DesiredLb, frontend: Frontend) -> list[str]:
    return [str(lb.wanted.backends[b].address) for b in lb.wanted.services[frontend].backend_ids]


def changed_slots(old: tuple[int, ...], new: tuple[int, ...]) -> int:
    """Slot writes LbMaps does for old → new (slots 1..len(new) that differ)."""
    return sum(1 for i, b in enumerate(new) if i >= len(old) or old[i] != b)


# --- stable_order -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param((), [3, 1, 2], (1, 2, 3), id="fresh-sorted"),
        pytest.param((1, 2, 3), [3, 2, 1], (1, 2, 3), id="unchanged"),
        pytest.param((1, 2, 3), [1, 3], (1, 3), id="remove-middle"),
        pytest.param((1, 2, 3), [2, 3], (3, 2), id="remove-first"),
        pytest.param((1, 2, 3), [1, 2], (1, 2), id="remove-last"),
        pytest.param((1, 2, 3, 4, 5), [1, 5], (1, 5), id="remove-many-middle"),
        pytest.param((1, 2, 3), [3], (3,), id="remove-all-but-last"),
        pytest.param((1, 2, 3), [1, 2, 3, 4], (1, 2, 3, 4), id="add"),
        pytest.param((1, 2, 3), [1, 3, 4], (1, 4, 3), id="add-and-remove"),
        pytest.param((1, 2, 3, 4), [2, 5, 6, 7], (5, 2, 6, 7), id="add-more-than-removed"),
        pytest.param((1, 2, 3), [], (), id="all-removed"),
        pytest.param((), [], (), id="empty"),
        pytest.param((1, 2, 3), [3, 3, 1, 1], (1, 3), id="duplicates-in-new"),
        pytest.param((1, 1, 2), [1, 2], (1, 2), id="duplicates-in-old"),
        pytest.param((4, 2, 9), [2, 4, 9], (4, 2, 9), id="unsorted-old-kept"),
    ],
)
def test_stable_order(old: tuple[int, ...], new: list[int], expected: tuple[int, ...]) -> None:
    assert stable_order(old, new) == expected


@pytest.mark.parametrize("seed", range(20))
def test_stable_order_is_a_permutation_that_moves_few_slots(seed: int) -> None:
    rng = random.Random(seed)
    old = tuple(rng.sample(range(1, 60), rng.randrange(0, 30)))
    removed = set(rng.sample(old, rng.randrange(0, len(old) + 1))) if old else set()
    added = set(rng.sample(range(60, 90), rng.randrange(0, 5)))
    new = (set(old) - removed) | added
    result = stable_order(old, new)
    assert sorted(result) == sorted(new)
    # Kept ids stay put unless moved into a hole: at most one move per removed id.
    assert changed_slots(old, result) <= len(removed) + len(added)


# --- set_service ------------------------------------------------------------------------------


def test_one_service_with_three_backends() -> None:
    lb = DesiredLb()
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.2", "10.1.0.3"]))
    assert list(lb.wanted.services) == [fe()]
    entry = lb.wanted.services[fe()]
    assert len(entry.backend_ids) == 3
    assert addresses_of(lb, fe()) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    assert lb.wanted.backends[entry.backend_ids[0]] == Lb4Backend(
        IPv4Address("10.1.0.1"), 8080, IPPROTO_TCP, cell_id=1
    )
    assert entry.rev_nat_id >= 1
    assert lb.take_dirty() == ({fe()}, set(entry.backend_ids))
    assert lb.take_dirty() == (set(), set())
    assert lb.stats.services == 1


def test_setting_the_same_service_again_marks_nothing_dirty() -> None:
    lb = DesiredLb()
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.2"]))
    lb.take_dirty()
    lb.set_service(CART, simple(CART, ["10.1.0.2", "10.1.0.1"]))
    assert lb.take_dirty() == (set(), set())


def test_a_backend_shared_by_two_services_has_one_id() -> None:
    lb = DesiredLb()
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.2"]))
    lb.set_service(PAY, simple(PAY, ["10.1.0.2", "10.1.0.3"], vip="10.96.0.11"))
    shared = ids_by_address(lb)["10.1.0.2"]
    assert shared in lb.wanted.services[fe()].backend_ids
    assert shared in lb.wanted.services[fe("10.96.0.11")].backend_ids
    assert len(lb.wanted.backends) == 3
    # One user goes: the backend stays for the other.
    lb.set_service(CART, simple(CART, ["10.1.0.1"]))
    assert lb.wanted.backends[shared].address == IPv4Address("10.1.0.2")
    lb.set_service(PAY, simple(PAY, ["10.1.0.3"], vip="10.96.0.11"))
    assert shared not in lb.wanted.backends


def test_a_backend_shared_by_two_frontends_of_one_service_stays_while_one_uses_it() -> None:
    lb = DesiredLb()
    both = merged(
        CART, {(VIP, 80, "TCP"): [backend("10.1.0.1")], (VIP, 81, "TCP"): [backend("10.1.0.1")]}
    )
    lb.set_service(CART, both)
    bid = ids_by_address(lb)["10.1.0.1"]
    lb.set_service(CART, merged(CART, {(VIP, 81, "TCP"): [backend("10.1.0.1")]}))
    assert fe() not in lb.wanted.services
    assert lb.wanted.services[fe(port=81)].backend_ids == (bid,)
    assert bid in lb.wanted.backends


def test_removing_one_backend_rewrites_o1_slots() -> None:
    lb = DesiredLb()
    addresses = [f"10.1.0.{n}" for n in range(1, 11)]
    lb.set_service(CART, simple(CART, addresses))
    before = lb.wanted.services[fe()].backend_ids
    removed = ids_by_address(lb)["10.1.0.4"]
    lb.take_dirty()
    lb.set_service(CART, simple(CART, [a for a in addresses if a != "10.1.0.4"]))
    after = lb.wanted.services[fe()].backend_ids
    assert removed not in after
    assert len(after) == 9
    assert changed_slots(before, after) == 1  # the last one moved into the hole
    assert after[3] == before[-1]
    assert lb.take_dirty() == ({fe()}, {removed})


def test_backend_ids_are_not_reused_right_after_release() -> None:
    lb = DesiredLb()
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.2"]))
    released = ids_by_address(lb)["10.1.0.2"]
    lb.set_service(CART, simple(CART, ["10.1.0.1"]))
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.3"]))
    fresh = ids_by_address(lb)["10.1.0.3"]
    assert fresh != released
    assert fresh > released
    # Even the same address comes back under a new id.
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.3", "10.1.0.2"]))
    assert ids_by_address(lb)["10.1.0.2"] > fresh


def test_rev_nat_ids_are_not_reused_right_after_release() -> None:
    lb = DesiredLb()
    lb.set_service(CART, simple(CART, ["10.1.0.1"]))
    first = lb.wanted.services[fe()].rev_nat_id
    lb.set_service(CART, None)
    lb.set_service(PAY, simple(PAY, ["10.1.0.1"], vip="10.96.0.11"))
    assert lb.wanted.services[fe("10.96.0.11")].rev_nat_id != first


def test_ids_wrap_around_and_run_out() -> None:
    ids = _Ids(3)
    assert [ids.take(), ids.take()] == [1, 2]
    ids.give_back(1)
    assert ids.take() == 3
    assert ids.take() == 1  # came round again
    with pytest.raises(IdsExhausted):
        ids.take()
    ids.give_back(2)
    assert ids.take() == 2


def test_ipv6_frontends_and_backends_are_skipped_and_counted() -> None:
    lb = DesiredLb()
    service = merged(
        CART,
        {
            ("fd00::10", 80, "TCP"): [backend("fd00:1::1")],
            (VIP, 80, "TCP"): [backend("10.1.0.1"), backend("fd00:1::2")],
        },
    )
    lb.set_service(CART, service)
    assert list(lb.wanted.services) == [fe()]
    assert addresses_of(lb, fe()) == ["10.1.0.1"]
    assert lb.stats.skipped == {"frontend-not-ipv4-tcp-udp": 1, "backend-not-ipv4": 1}


def test_udp_frontend_gets_udp_backends() -> None:
    lb = DesiredLb()
    lb.set_service(
        CART, merged(CART, {(VIP, 53, "UDP"): [backend("10.1.0.1", port=53, protocol="UDP")]})
    )
    entry = lb.wanted.services[fe(port=53, proto=IPPROTO_UDP)]
    assert lb.wanted.backends[entry.backend_ids[0]].proto == IPPROTO_UDP


def test_a_vip_taken_by_another_ref_is_skipped_and_counted() -> None:
    lb = DesiredLb()
    lb.set_service(CART, simple(CART, ["10.1.0.1"]))
    owner_entry = lb.wanted.services[fe()]
    lb.take_dirty()
    lb.set_service(
        PAY,
        merged(
            PAY, {(VIP, 80, "TCP"): [backend("10.1.0.9")], (VIP, 443, "TCP"): [backend("10.1.0.9")]}
        ),
    )
    assert lb.stats.conflicts == 1
    assert lb.wanted.services[fe()] == owner_entry  # the first owner keeps it
    assert lb.wanted.services[fe(port=443)].backend_ids == (ids_by_address(lb)["10.1.0.9"],)
    # Removing the loser does not take the owner's frontend with it.
    lb.set_service(PAY, None)
    assert lb.wanted.services == {fe(): owner_entry}


def test_removing_a_service_drops_its_frontends_and_unreferenced_backends() -> None:
    lb = DesiredLb()
    lb.set_service(
        CART,
        merged(
            CART,
            {
                (VIP, 80, "TCP"): [backend("10.1.0.1"), backend("10.1.0.2")],
                (VIP, 81, "TCP"): [backend("10.1.0.1")],
            },
        ),
    )
    lb.set_service(PAY, simple(PAY, ["10.1.0.2"], vip="10.96.0.11"))
    ids = ids_by_address(lb)
    lb.take_dirty()
    lb.set_service(CART, None)
    assert set(lb.wanted.services) == {fe("10.96.0.11")}
    assert set(lb.wanted.backends) == {ids["10.1.0.2"]}
    assert lb.take_dirty() == ({fe(), fe(port=81)}, {ids["10.1.0.1"]})
    assert lb.stats.services == 1
    lb.set_service(PAY, None)
    assert lb.wanted == LbState()
    assert lb.stats.services == 0


def test_a_changed_cell_id_rewrites_the_backend_in_place() -> None:
    lb = DesiredLb()
    lb.set_service(CART, simple(CART, ["10.1.0.1"]))
    bid = ids_by_address(lb)["10.1.0.1"]
    lb.take_dirty()
    lb.set_service(
        CART, merged(CART, {(VIP, 80, "TCP"): [backend("10.1.0.1", cell="east", cell_id=2)]})
    )
    assert lb.wanted.backends[bid].cell_id == 2
    assert lb.take_dirty() == (set(), {bid})


# --- seed (restart) ---------------------------------------------------------------------------


def churned() -> tuple[DesiredLb, list[MergedService]]:
    """A desired state whose slot order is no longer sorted, as after some churn."""
    lb = DesiredLb()
    cart = [f"10.1.0.{n}" for n in range(1, 6)]
    lb.set_service(CART, simple(CART, cart))
    cart = [a for a in cart if a != "10.1.0.2"]  # the last backend moves into slot 2
    lb.set_service(CART, simple(CART, cart))
    pay = simple(PAY, ["10.1.0.3", "10.1.0.9"], vip="10.96.0.11")
    lb.set_service(PAY, pay)
    return lb, [simple(CART, cart), pay]


def test_seed_adopts_restored_ids_and_order() -> None:
    first, services = churned()
    restored = first.wanted.copy()
    assert restored.services[fe()].backend_ids != tuple(sorted(restored.services[fe()].backend_ids))
    lb = DesiredLb()
    lb.seed(restored)
    for service in reversed(services):  # another order than the first agent's
        lb.set_service(service.ref, service)
    assert len(LbDiff.between(restored, lb.wanted)) == 0
    assert lb.wanted == first.wanted


def test_after_seed_new_ids_do_not_collide_with_restored_ones() -> None:
    first, _ = churned()
    restored = first.wanted.copy()
    lb = DesiredLb()
    lb.seed(restored)
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.77"]))
    new_id = ids_by_address(lb)["10.1.0.77"]
    assert new_id > max(restored.backends)
    lb.set_service(PAY, simple(PAY, ["10.1.0.3"], vip="10.96.0.12"))
    rev = lb.wanted.services[fe("10.96.0.12")].rev_nat_id
    assert rev not in {e.rev_nat_id for e in restored.services.values()}


def test_seed_restored_order_is_used_only_once() -> None:
    restored = LbState(
        services={fe(): ServiceEntry(7, (3, 1, 2))},
        backends={
            b: Lb4Backend(IPv4Address(f"10.1.0.{b}"), 8080, IPPROTO_TCP, cell_id=1)
            for b in (1, 2, 3)
        },
    )
    lb = DesiredLb()
    lb.seed(restored)
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.2", "10.1.0.3"]))
    assert lb.wanted.services[fe()] == ServiceEntry(7, (3, 1, 2))
    lb.set_service(CART, None)
    lb.set_service(CART, simple(CART, ["10.1.0.1", "10.1.0.2", "10.1.0.3"]))
    assert addresses_of(lb, fe()) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]  # fresh ids, in order


def peer_backed() -> tuple[LbState, list[str], MergedService]:
    """A restored frontend whose slots are out of id order, as after churn before a restart:
    the maps, cart's backend addresses in slot order, and the other service (pay)."""
    first, (_, pay) = churned()
    restored = first.wanted.copy()
    cart = restored.services[fe()].backend_ids
    assert cart != tuple(sorted(cart))
    return restored, addresses_of(first, fe()), pay


@pytest.mark.parametrize(
    "arriving",
    [
        pytest.param([[]], id="first-build-empty"),
        pytest.param([["10.1.0.1"]], id="first-build-own-cell-only"),
        pytest.param([[], ["10.1.0.5"], ["10.1.0.5", "10.1.0.1"]], id="peer-arrives-in-parts"),
    ],
)
def test_restored_order_survives_builds_before_every_source_synced(
    arriving: list[list[str]],
) -> None:
    restored, addresses, pay = peer_backed()
    lb = DesiredLb()
    lb.seed(restored)
    lb.set_service(PAY, pay)
    for part in arriving:  # the own cell first, the peer's backends later
        lb.set_service(CART, simple(CART, part))
    lb.set_service(CART, simple(CART, addresses))
    assert lb.wanted.services[fe()] == restored.services[fe()]
    assert len(LbDiff.between(restored, lb.wanted)) == 0  # nothing for the maps to rewrite
    lb.take_dirty()
    lb.release_restored(restored.services)  # the delete gate opens: nothing changes
    assert lb.take_dirty() == (set(), set())
    assert lb.wanted.services[fe()] == restored.services[fe()]


def test_restored_order_survives_endpoint_updates_before_every_source_synced() -> None:
    restored, addresses, _ = peer_backed()
    lb = DesiredLb()
    lb.seed(restored)
    lb.set_service(CART, simple(CART, []))
    frontend = RecordFrontend(vip=ip_address(VIP), port=80, protocol="TCP")
    for address in sorted(addresses, reverse=True):  # one endpoint at a time, in another order
        lb.update_frontend(CART, frontend, [backend(address)], [])
    assert lb.wanted.services[fe()] == restored.services[fe()]


def test_after_release_a_backend_that_did_not_come_back_leaves_a_hole_filled_by_the_last() -> None:
    restored, addresses, _ = peer_backed()
    lb = DesiredLb()
    lb.seed(restored)
    _, *back = addresses  # the first one does not come back
    lb.set_service(CART, simple(CART, [*back, "10.1.0.77"]))
    new_id = ids_by_address(lb)["10.1.0.77"]
    # While the gate is closed the maps keep the restored slots; the new backend goes after.
    restored_ids = restored.services[fe()].backend_ids
    assert lb.wanted.services[fe()].backend_ids == (*restored_ids[1:], new_id)
    held = {fe(): ServiceEntry(7, (*restored_ids, new_id))}  # what the gated maps hold
    lb.take_dirty()
    lb.release_restored(held)
    assert lb.wanted.services[fe()].backend_ids == (new_id, *restored_ids[1:])
    assert changed_slots(held[fe()].backend_ids, lb.wanted.services[fe()].backend_ids) == 1
    assert lb.take_dirty()[0] == {fe()}
    # From now on the usual order: a removed backend's slot is filled by the last one.
    lb.set_service(CART, simple(CART, [*back[1:], "10.1.0.77"]))
    assert lb.wanted.services[fe()].backend_ids == (new_id, restored_ids[-1], *restored_ids[2:-1])


def test_routes_for_nodes_first_ipv4_gateway_deterministic_winner() -> None:
    nodes = [
        Node(cell="gamma", name="g1", addresses=["192.168.3.1"], pod_cidrs=["10.9.0.0/24"]),
        Node(
            cell="beta",
            name="b2",
            addresses=["fd00::2", "192.168.2.2"],
            pod_cidrs=["10.2.2.0/24", "fd00:2::/64"],
        ),
        Node(
            cell="beta",
            name="b1",
            addresses=["192.168.2.1"],
            pod_cidrs=["10.2.1.0/24", "10.9.0.0/24"],
        ),
        Node(cell="beta", name="b3", addresses=["fd00::3"], pod_cidrs=["10.2.3.0/24"]),
    ]
    expected = {
        IPv4Network("10.2.1.0/24"): IPv4Address("192.168.2.1"),
        IPv4Network("10.9.0.0/24"): IPv4Address("192.168.2.1"),  # beta/b1 before gamma/g1
        IPv4Network("10.2.2.0/24"): IPv4Address("192.168.2.2"),  # first IPv4 address
    }  # b3 has no IPv4 address: no route
    assert routes_for_nodes(nodes) == expected
    assert routes_for_nodes(reversed(nodes)) == expected
