"""`CellCache`: one cell's records, validated and indexed; deletes gated on the kind's canary."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from meshcore.lbpolicy import ServiceRef
from meshcore.model import (
    Affinity,
    CellConfig,
    Endpoint,
    EndpointPort,
    Frontend,
    Heartbeat,
    Kind,
    Node,
    Peer,
    Record,
    RecordError,
    Service,
    SyncCanary,
    endpoint_key,
    kind_of_key,
    synced_key,
)
from meshcore.watch.listwatch import Change
from nodeagent.cellcache import CellCache, Touched

CELL = "east"
REF = ServiceRef("shop", "cart")
OTHER_REF = ServiceRef("shop", "pay")


def service(ref: ServiceRef = REF, cell: str = CELL) -> Service:
    return Service(
        cell=cell,
        namespace=ref.namespace,
        name=ref.name,
        frontends=[Frontend(vip="10.96.0.10", port=80)],
        global_=True,
        shared=True,
        affinity=Affinity.NONE,
    )


def endpoint(
    address: str, ref: ServiceRef = REF, cell: str = CELL, *, updated_at: float = 0.0
) -> Endpoint:
    return Endpoint(
        cell=cell,
        namespace=ref.namespace,
        service=ref.name,
        address=ip_address(address),
        ports=[EndpointPort(port=8080)],
        updated_at=updated_at,
    )


def node(name: str = "node-1") -> Node:
    return Node(cell=CELL, name=name, addresses=[ip_address("192.168.0.1")])


def peer(name: str = "west") -> Peer:
    return Peer(cell=CELL, name=name, id=3, address="west.example:4443")


def canary(kind: Kind) -> SyncCanary:
    return SyncCanary(cell=CELL, kind=kind, timestamp=1.0)


def config() -> CellConfig:
    return CellConfig(name=CELL, id=2, pod_cidrs=["10.2.0.0/16"])


_revision = iter(range(1, 1_000_000))


def put(record: Record) -> Change:
    key = record.key()
    return Change(key, kind_of_key(key), record, next(_revision))


def delete(record: Record) -> Change:
    key = record.key()
    return Change(key, kind_of_key(key), None, next(_revision))


def delete_canary(kind: Kind) -> Change:
    return Change(synced_key(CELL, kind), Kind.SYNCED, None, next(_revision))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Touched]] = []

    def __call__(self, cell: str, touched: Touched) -> None:
        self.calls.append((cell, touched))


def cache_with(*changes: Change) -> tuple[CellCache, Recorder]:
    recorder = Recorder()
    cache = CellCache(CELL, on_touch=recorder)
    for change in changes:
        cache.apply(change)
    return cache, recorder


# --- indexing ---------------------------------------------------------------------------------


def test_puts_index_services_endpoints_nodes_and_peers() -> None:
    ep1, ep2 = endpoint("10.2.0.1"), endpoint("10.2.0.2")
    cache, recorder = cache_with(
        put(service()),
        put(ep1),
        put(ep2),
        put(node()),
        put(peer()),
        put(endpoint("10.2.0.9", OTHER_REF)),
    )
    assert cache.services == {REF: service()}
    assert cache.endpoints[REF] == {"10.2.0.1": ep1, "10.2.0.2": ep2}
    assert set(cache.endpoints[OTHER_REF]) == {"10.2.0.9"}
    assert cache.nodes == {"node-1": node()}
    assert cache.peers == {"west": peer()}
    assert cache.kind_counts() == {"endpoints": 3, "nodes": 1, "peers": 1, "services": 1}
    touched = [t for _, t in recorder.calls]
    assert [t.services for t in touched[:3]] == [{REF}, set(), set()]
    assert [t.endpoints for t in touched[:3]] == [set(), {(REF, "10.2.0.1")}, {(REF, "10.2.0.2")}]
    assert touched[3].nodes
    assert not touched[3].services
    assert touched[4].peers
    assert {cell for cell, _ in recorder.calls} == {CELL}


def test_a_re_put_replaces_the_record_without_counting_it_twice() -> None:
    cache, _ = cache_with(put(endpoint("10.2.0.1")), put(endpoint("10.2.0.1", updated_at=5.0)))
    assert cache.endpoints[REF]["10.2.0.1"].updated_at == 5.0
    assert cache.kind_counts() == {"endpoints": 1}


def test_touched_stamps_carry_endpoint_updated_at() -> None:
    cache, recorder = cache_with(put(service()))
    cache.apply(put(endpoint("10.2.0.1", updated_at=1700000000.5)))
    _, touched = recorder.calls[-1]
    assert touched.stamps == [1700000000.5]
    assert touched.endpoints == {(REF, "10.2.0.1")}
    assert not touched.services  # an endpoint change is not a whole-service change
    assert recorder.calls[0][1].stamps == []  # a service put carries no stamp


def test_heartbeat_is_kept_and_reported() -> None:
    beat = Heartbeat(cell=CELL, timestamp=10.0, sequence=1)
    cache, recorder = cache_with(put(beat))
    assert cache.heartbeat == beat
    assert recorder.calls[-1][1].heartbeat


# --- validation -------------------------------------------------------------------------------


def test_validate_refuses_a_record_of_another_cell() -> None:
    cache = CellCache(CELL)
    foreign = service(cell="west")
    with pytest.raises(RecordError, match="west"):
        cache.validate(foreign.key(), foreign)
    cache.validate(service().key(), service())  # its own: fine


def test_validate_refuses_an_endpoint_outside_the_cells_cidrs_once_config_is_set() -> None:
    cache = CellCache(CELL)
    outside = endpoint("10.9.0.1")
    cache.validate(outside.key(), outside)  # no config yet: only the cell is checked
    cache.config = config()
    with pytest.raises(RecordError, match="outside"):
        cache.validate(outside.key(), outside)
    inside = endpoint("10.2.3.4")
    cache.validate(inside.key(), inside)


# --- deletes gated on the kind's canary --------------------------------------------------------


def test_deletes_are_held_while_the_kind_has_no_canary() -> None:
    ep = endpoint("10.2.0.1")
    cache, recorder = cache_with(put(service()), put(ep))
    calls = len(recorder.calls)
    cache.apply(delete(ep))
    assert cache.endpoints[REF] == {"10.2.0.1": ep}  # last-known-good
    assert cache.held_deletes == 1
    assert cache.stats.held_deletes == 1
    assert len(recorder.calls) == calls  # nothing touched


def test_canary_releases_held_deletes_except_keys_put_again_meanwhile() -> None:
    ep1, ep2, ep3 = endpoint("10.2.0.1"), endpoint("10.2.0.2"), endpoint("10.2.0.3")
    cache, recorder = cache_with(put(ep1), put(ep2), put(ep3))
    cache.apply(delete(ep1))
    cache.apply(delete(ep2))
    ep2_again = endpoint("10.2.0.2", updated_at=9.0)
    cache.apply(put(ep2_again))  # re-put: its held delete is void
    assert cache.held_deletes == 1
    cache.apply(put(canary(Kind.ENDPOINT)))
    assert cache.endpoints[REF] == {"10.2.0.2": ep2_again, "10.2.0.3": ep3}
    assert cache.held_deletes == 0
    assert cache.stats.released_deletes == 1
    _, touched = recorder.calls[-1]
    assert touched.endpoints == {(REF, "10.2.0.1")}  # the released delete
    # Synced now: a delete lands at once.
    cache.apply(delete(ep3))
    assert cache.endpoints[REF] == {"10.2.0.2": ep2_again}


def test_a_canary_releases_only_its_own_kind() -> None:
    cache, _ = cache_with(put(service()), put(endpoint("10.2.0.1")))
    cache.apply(delete(service()))
    cache.apply(delete(endpoint("10.2.0.1")))
    cache.apply(put(canary(Kind.SERVICE)))
    assert REF not in cache.services
    assert set(cache.endpoints[REF]) == {"10.2.0.1"}  # endpoints still gated
    assert cache.synced_kinds == {Kind.SERVICE}


def test_a_canary_delete_re_arms_the_gate() -> None:
    # As in a relist after the peer's etcd was wiped: the canary goes, then every record.
    ep1, ep2 = endpoint("10.2.0.1"), endpoint("10.2.0.2")
    cache, _ = cache_with(put(canary(Kind.ENDPOINT)), put(ep1), put(ep2))
    cache.apply(delete(ep1))
    assert set(cache.endpoints[REF]) == {"10.2.0.2"}  # synced: deletes land
    cache.apply(delete_canary(Kind.ENDPOINT))
    assert Kind.ENDPOINT not in cache.synced_kinds
    cache.apply(delete(ep2))
    assert set(cache.endpoints[REF]) == {"10.2.0.2"}  # held again
    assert cache.held_deletes == 1
    cache.apply(put(canary(Kind.ENDPOINT)))
    assert REF not in cache.endpoints


def test_deletes_of_ungated_kinds_land_at_once() -> None:
    beat = Heartbeat(cell=CELL, timestamp=10.0, sequence=1)
    cache, _ = cache_with(put(beat))
    cache.apply(delete(beat))
    assert cache.heartbeat is None
    assert cache.held_deletes == 0


def test_a_delete_of_an_unknown_key_is_ignored() -> None:
    cache, recorder = cache_with()
    key = endpoint_key(CELL, REF.namespace, REF.name, "10.2.0.7")
    cache.apply(Change(key, Kind.ENDPOINT, None, 1))
    assert cache.held_deletes == 0
    assert recorder.calls == []


# --- drain ------------------------------------------------------------------------------------


def test_drain_empties_and_reports_every_touched_ref() -> None:
    only_endpoints = ServiceRef("shop", "stock")  # endpoints arrived before their service
    cache, recorder = cache_with(
        put(service()),
        put(endpoint("10.2.0.1")),
        put(service(OTHER_REF)),
        put(endpoint("10.2.0.5", only_endpoints)),
        put(node()),
        put(peer()),
        put(canary(Kind.ENDPOINT)),
        put(Heartbeat(cell=CELL, timestamp=1.0, sequence=0)),
    )
    cache.apply(delete(service(OTHER_REF)))  # held: services have no canary
    touched = cache.drain()
    assert touched.services == {REF, OTHER_REF, only_endpoints}
    assert touched.nodes
    assert touched.peers
    assert recorder.calls[-1] == (CELL, touched)
    assert cache.services == {}
    assert cache.endpoints == {}
    assert cache.nodes == {}
    assert cache.peers == {}
    assert cache.heartbeat is None
    assert cache.synced_kinds == set()
    assert cache.held_deletes == 0
    assert cache.kind_counts() == {}


def test_drain_of_an_empty_cache_touches_nothing() -> None:
    cache, recorder = cache_with()
    assert not cache.drain()
    assert recorder.calls == []
