"""`KubeState`'s EndpointSlice path: incremental per changed address, same records as a full
merge, and a one-endpoint change costs O(that slice), not O(the service) (bench/kube_source.py:
a flip in a 1,000-endpoint service took 19 ms of merging all 1,000 records before)."""

from __future__ import annotations

import random
import time
from typing import Any

from meshapi.kubeobjects import endpoints_from_slices, parse_endpoint_slice
from meshapi.kubestate import KubeState, WatchKind
from meshapi.views import Item
from meshcore.model import Endpoint, Kind, decode_record, encode_record, kind_of_key
from tests.meshapi.kube_objects import CONFIG, endpoint_slice


def slice_(
    name: str,
    addresses: dict[int, bool],
    *,
    service: str = "big",
    ports: tuple[int, ...] = (8080,),
) -> dict[str, Any]:
    """A slice listing 10.1.x.y for each n (address index) with its ready condition."""
    return endpoint_slice(
        name,
        [
            {
                "addresses": [f"10.1.{n // 250}.{n % 250 + 1}"],
                "nodeName": f"n{n % 3}",
                "conditions": {"ready": ready},
            }
            for n, ready in sorted(addresses.items())
        ],
        [{"name": f"p{p}", "port": p, "protocol": "TCP"} for p in ports],
        service=service,
    )


def endpoint_records(state: KubeState) -> dict[str, Endpoint]:
    """The desired Endpoint records, `updated_at` cleared."""
    out: dict[str, Endpoint] = {}
    for key, value in state.desired.items():
        if kind_of_key(key) is Kind.ENDPOINT:
            record = decode_record(key, value)
            assert isinstance(record, Endpoint)
            out[key] = record.model_copy(update={"updated_at": 0.0})
    return out


def full_merge(objects: dict[str, dict[str, Any]]) -> dict[str, Endpoint]:
    """The reference: every service's endpoint set merged from all its slices at once."""
    by_service: dict[str, list[Any]] = {}
    for obj in objects.values():
        parsed = parse_endpoint_slice(obj, config=CONFIG)
        assert parsed is not None
        by_service.setdefault(parsed.service, []).append(parsed)
    out: dict[str, Endpoint] = {}
    for slices in by_service.values():
        out.update(endpoints_from_slices(slices, cell=CONFIG.name))
    return out


def test_random_slice_changes_give_the_records_of_a_full_merge() -> None:
    rng = random.Random(13)
    state = KubeState(CONFIG)
    objects: dict[str, dict[str, Any]] = {}
    for step in range(400):
        name = f"s{rng.randrange(6)}"
        action = rng.random()
        if action < 0.15 and name in objects:
            state.apply(WatchKind.ENDPOINTSLICES, "DELETED", objects.pop(name))
        else:
            # Overlapping address ranges (an address in two slices), two services (a slice can
            # move between them), port sets that change, conditions that flip.
            addresses = {n: rng.random() < 0.7 for n in rng.sample(range(40), rng.randrange(0, 12))}
            obj = slice_(
                name,
                addresses,
                service=rng.choice(["big", "small"]),
                ports=tuple(rng.sample([8080, 8081, 9090], rng.randrange(0, 3))),
            )
            event = "MODIFIED" if name in objects else "ADDED"
            objects[name] = obj
            diff = state.apply(WatchKind.ENDPOINTSLICES, event, obj)
            assert not diff.errors, step
        assert endpoint_records(state) == full_merge(objects), step


def test_a_flip_writes_one_key_and_leaves_the_others_bytes() -> None:
    state = KubeState(CONFIG, clock=lambda: 1.0)
    objects = {
        f"big-{i}": slice_(f"big-{i}", {n: True for n in range(i * 100, i * 100 + 100)})
        for i in range(10)
    }
    for obj in objects.values():
        state.apply(WatchKind.ENDPOINTSLICES, "ADDED", obj)
    before = dict(state.desired)
    assert len(before) == 1000
    flipped = slice_("big-3", {n: n != 342 for n in range(300, 400)})
    state._clock = lambda: 2.0
    diff = state.apply(WatchKind.ENDPOINTSLICES, "MODIFIED", flipped)
    assert list(diff.puts) == ["cellmesh/v1/endpoints/alpha/demo/big/10.1.1.93"]
    assert not diff.deletes
    record = decode_record(*next(iter(diff.puts.items())))
    assert isinstance(record, Endpoint)
    assert not record.ready
    assert record.updated_at == 2.0
    changed = {k for k, v in state.desired.items() if before.get(k) != v}
    assert changed == set(diff.puts)
    # Moving the slice's ports rewrites that slice's records only.
    diff = state.apply(
        WatchKind.ENDPOINTSLICES,
        "MODIFIED",
        slice_("big-3", {n: True for n in range(300, 400)}, ports=(9090,)),
    )
    assert len(diff.puts) == 100
    assert endpoint_records(state) == full_merge(
        {**objects, "big-3": slice_("big-3", {n: True for n in range(300, 400)}, ports=(9090,))}
    )


def flip_cost(slices: int, per: int, flips: int = 60) -> float:
    """Best-of-3 seconds per one-endpoint flip in a service of `slices` slices of `per`."""
    state = KubeState(CONFIG)
    objects = [{n: True for n in range(i * per, (i + 1) * per)} for i in range(slices)]
    for i, addresses in enumerate(objects):
        state.apply(WatchKind.ENDPOINTSLICES, "ADDED", slice_(f"s{i}", addresses))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for k in range(flips):
            i = k % slices
            addresses = objects[i]
            n = i * per + (k // slices) % per
            addresses[n] = not addresses[n]
            diff = state.apply(WatchKind.ENDPOINTSLICES, "MODIFIED", slice_(f"s{i}", addresses))
            assert len(diff.puts) == 1
        best = min(best, (time.perf_counter() - start) / flips)
    return best


def test_a_flip_costs_o_of_its_slice_not_of_its_service() -> None:
    """Same slice size, 10x the service: about the same cost (it was ~8x: a full re-merge)."""
    small, big = flip_cost(1, 100), flip_cost(10, 100)
    assert big / small < 2.5, (small, big)


def test_a_restart_adopts_stored_endpoints_without_rewriting_them() -> None:
    state = KubeState(CONFIG, clock=lambda: 5.0)
    objects = {
        f"s{i}": slice_(f"s{i}", {n: True for n in range(i * 4, i * 4 + 4)}, service=f"svc{i}")
        for i in range(50)
    }
    for obj in objects.values():
        state.apply(WatchKind.ENDPOINTSLICES, "ADDED", obj)
    stored: dict[str, Item] = {}
    for key, record in endpoint_records(state).items():
        value = encode_record(record.model_copy(update={"updated_at": 1.0}))  # written earlier
        stored[key] = Item(key, Kind.ENDPOINT, value, 7, decode_record(key, value))
    diff = state.initial_diff(Kind.ENDPOINT, stored)
    assert not diff
    assert all(state.desired[k] == item.value for k, item in stored.items())
    # The adopted bytes are the unit's too: a later change elsewhere in the service keeps them.
    diff = state.apply(
        WatchKind.ENDPOINTSLICES,
        "MODIFIED",
        slice_("s0", {0: False, 1: True, 2: True, 3: True}, service="svc0"),
    )
    assert list(diff.puts) == ["cellmesh/v1/endpoints/alpha/demo/svc0/10.1.0.1"]
    key = "cellmesh/v1/endpoints/alpha/demo/svc0/10.1.0.2"
    assert state.desired[key] == stored[key].value
