"""`ServiceSelection` and `DesiredLb.update_frontend`: the incremental path equals a full merge.

Random change sequences (endpoint puts and deletes with every health and port mix, service record
changes, cells going stale) are fed both ways: incrementally, as the agent does, and through a
fresh `merge_service` + `DesiredLb.set_service` after every step. The selections and the load
balancer entries must agree after every step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from bpf.lbstate import LbState
from meshcore.lbpolicy import CellSource, MergedBackend, ServiceRef, ServiceSelection, merge_service
from meshcore.model import Affinity, Endpoint, EndpointPort, Frontend, Service
from nodeagent.desired import DesiredLb, patch_order, stable_order

REF = ServiceRef("shop", "cart")
HOME = "home"
CELLS = {HOME: 1, "east": 2, "west": 3}
VIP = "10.96.0.10"
FRONTENDS = [
    Frontend(name="http", vip=VIP, port=80),
    Frontend(name="dns", vip=VIP, port=53, protocol="UDP"),
]
PORT_SETS: list[list[EndpointPort]] = [
    [EndpointPort(name="http", port=8080)],
    [EndpointPort(name="http", port=8080), EndpointPort(name="dns", port=53, protocol="UDP")],
    [EndpointPort(name="dns", port=53, protocol="UDP")],
    [EndpointPort(name="metrics", port=9090)],  # serves no frontend
]
CONDITIONS = [(True, True, False), (False, True, True), (False, False, True), (False, False, False)]


def service(cell: str, rng: random.Random) -> Service:
    return Service(
        cell=cell,
        namespace=REF.namespace,
        name=REF.name,
        frontends=FRONTENDS,
        global_=rng.random() < 0.85,
        shared=rng.random() < 0.85,
        affinity=rng.choice(list(Affinity)),
    )


def endpoint(cell: str, n: int, rng: random.Random, now: float) -> Endpoint:
    ready, serving, terminating = rng.choice(CONDITIONS)
    return Endpoint(
        cell=cell,
        namespace=REF.namespace,
        service=REF.name,
        address=f"10.{CELLS[cell]}.0.{n}",
        ports=rng.choice(PORT_SETS),
        ready=ready,
        serving=serving,
        terminating=terminating,
        updated_at=now,
    )


class World:
    """What the cells publish, as the agent's caches would hold it."""

    def __init__(self, rng: random.Random) -> None:
        self.services: dict[str, Service | None] = {c: service(c, rng) for c in CELLS}
        self.endpoints: dict[str, dict[str, Endpoint]] = {c: {} for c in CELLS}
        self.stale: set[str] = set()

    def source(self, cell: str) -> CellSource:
        return CellSource(
            cell=cell,
            cell_id=CELLS[cell],
            local=cell == HOME,
            service=self.services[cell],
            endpoints=self.endpoints[cell],
            stale=cell in self.stale,
        )

    def sources(self) -> dict[str, CellSource]:
        return {cell: self.source(cell) for cell in CELLS}


def backend_set(backends: Sequence[MergedBackend]) -> set[tuple[str, str, int, str]]:
    return {(b.cell, str(b.address), b.port, b.protocol) for b in backends}


def lb_view(state: LbState) -> dict[str, set[tuple[str, int, int, int]]]:
    """Frontend -> its backends by value (ids differ between two `DesiredLb`s)."""
    view = {}
    for fe, entry in state.services.items():
        assert len(set(entry.backend_ids)) == len(entry.backend_ids), "a backend twice"
        bes = [state.backends[b] for b in entry.backend_ids]
        view[str(fe)] = {(str(be.address), be.port, be.proto, be.cell_id) for be in bes}
    return view


def check_desired_invariants(lb: DesiredLb) -> None:
    used = {b for entry in lb.wanted.services.values() for b in entry.backend_ids}
    assert used == set(lb.wanted.backends), "every backend used, every used backend known"


@pytest.mark.parametrize("seed", range(12))
def test_incremental_selection_and_desired_state_equal_a_full_merge(seed: int) -> None:
    rng = random.Random(seed)
    world = World(rng)
    world.services[HOME] = service(HOME, rng)  # the local service exists at the start
    selection = ServiceSelection.build(REF, world.sources())
    incremental = DesiredLb()
    assert selection is not None
    incremental.set_frontends(REF, selection.selected())
    rebuilds = updates = 0
    for step in range(400):
        roll = rng.random()
        if roll < 0.06:
            # A service record changed (any cell, possibly removed): the agent rebuilds.
            cell = rng.choice(list(CELLS))
            world.services[cell] = None if rng.random() < 0.2 else service(cell, rng)
            rebuilt = ServiceSelection.build(REF, world.sources())
            incremental.set_frontends(REF, rebuilt.selected() if rebuilt else None)
            selection = rebuilt
            rebuilds += 1
        elif roll < 0.09:
            world.stale ^= {rng.choice(["east", "west"])}  # a cell's state: rebuild too
            selection = ServiceSelection.build(REF, world.sources())
            incremental.set_frontends(REF, selection.selected() if selection else None)
            rebuilds += 1
        else:
            cell = rng.choice(list(CELLS))
            n = rng.randrange(1, 12)
            address = f"10.{CELLS[cell]}.0.{n}"
            if rng.random() < 0.3:
                world.endpoints[cell].pop(address, None)
            else:
                world.endpoints[cell][address] = endpoint(cell, n, rng, float(step))
            if selection is not None:
                for delta in selection.update(
                    world.source(cell), address, world.endpoints[cell].get(address)
                ):
                    incremental.update_frontend(REF, delta.frontend, delta.added, delta.removed)
                updates += 1
        merged = merge_service(REF, world.sources())
        if merged is None:
            assert selection is None
        else:
            assert selection is not None
            got = {f.port: backend_set(b) for f, b in selection.selected()}
            want = {mf.frontend.port: backend_set(mf.backends) for mf in merged.frontends}
            assert got == want, f"step {step}"
        full = DesiredLb()
        full.set_service(REF, merged)
        assert lb_view(incremental.wanted) == lb_view(full.wanted), f"step {step}"
        check_desired_invariants(incremental)
    assert rebuilds > 10, "the rebuild path was exercised"
    assert updates > 100, "the update path was exercised"


def test_an_update_in_place_keeps_the_backend_id_and_slot() -> None:
    rng = random.Random(1)
    world = World(rng)
    world.services = {
        c: service(c, rng).model_copy(
            update={"global_": True, "shared": True, "affinity": Affinity.NONE}
        )
        for c in CELLS
    }
    for n in range(1, 6):
        ep = endpoint("east", n, rng, 0.0).model_copy(
            update={"ready": True, "serving": True, "terminating": False, "ports": PORT_SETS[0]}
        )
        world.endpoints["east"][str(ep.address)] = ep
    selection = ServiceSelection.build(REF, world.sources())
    assert selection is not None
    lb = DesiredLb()
    lb.set_frontends(REF, selection.selected())
    before = dict(lb.wanted.services)
    lb.take_dirty()
    address = "10.2.0.3"
    world.endpoints["east"][address] = world.endpoints["east"][address].model_copy(
        update={"updated_at": 99.0}
    )
    (delta,) = selection.update(world.source("east"), address, world.endpoints["east"][address])
    assert len(delta.added) == len(delta.removed) == 1  # changed: in both
    lb.update_frontend(REF, delta.frontend, delta.added, delta.removed)
    assert lb.wanted.services == before  # same ids, same slots
    assert lb.take_dirty() == (set(), set())


def test_an_update_of_a_foreign_endpoint_is_refused() -> None:
    rng = random.Random(2)
    world = World(rng)
    selection = ServiceSelection.build(REF, world.sources())
    assert selection is not None
    stray = endpoint("west", 1, rng, 0.0)
    with pytest.raises(ValueError, match="is not east/shop/cart"):
        selection.update(world.source("east"), "10.3.0.1", stray)


@pytest.mark.parametrize("seed", range(200))
def test_patch_order_equals_stable_order(seed: int) -> None:
    rng = random.Random(seed)
    old = tuple(rng.sample(range(1, 60), rng.randrange(0, 30)))
    removed = rng.sample(old, rng.randrange(0, len(old) + 1)) if old else []
    added = rng.sample(sorted(set(range(60, 90))), rng.randrange(0, 6))
    want = stable_order(old, (set(old) - set(removed)) | set(added))
    assert patch_order(old, added, removed) == want
