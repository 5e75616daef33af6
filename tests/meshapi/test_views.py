"""The export view, table-driven (pure: no etcd, no gRPC)."""

from __future__ import annotations

import pytest

from meshapi.views import Item, View, ViewName, admit_exported, diff_views, view_of
from meshcore.model import Heartbeat, Kind, Record, kind_of_key
from tests.meshapi.helpers import endpoint, peer, service


def item(record: Record, revision: int = 1) -> Item:
    from meshcore.model import encode_record

    key = record.key()
    return Item(key, kind_of_key(key), encode_record(record), revision, record)


def state(*records: Record) -> dict[str, Item]:
    return {r.key(): item(r) for r in records}


@pytest.mark.parametrize(
    ("records", "probe", "exported"),
    [
        pytest.param([service("alpha")], service("alpha"), True, id="global-shared"),
        pytest.param(
            [service("alpha", shared=False)],
            service("alpha", shared=False),
            False,
            id="global-unshared",
        ),
        pytest.param(
            [service("alpha", global_=False)],
            service("alpha", global_=False),
            False,
            id="non-global",
        ),
        pytest.param(
            [service("alpha"), endpoint("alpha", 1)],
            endpoint("alpha", 1),
            True,
            id="endpoint-of-exported",
        ),
        pytest.param(
            [service("alpha", shared=False), endpoint("alpha", 1)],
            endpoint("alpha", 1),
            False,
            id="endpoint-of-unshared",
        ),
        pytest.param(
            [endpoint("alpha", 1)], endpoint("alpha", 1), False, id="endpoint-without-service"
        ),
        pytest.param(
            [peer("alpha", "beta", id_=2)],
            peer("alpha", "beta", id_=2),
            False,
            id="peer-list-private",
        ),
        pytest.param(
            [Heartbeat(cell="alpha", timestamp=1.0, sequence=1)],
            Heartbeat(cell="alpha", timestamp=1.0, sequence=1),
            True,
            id="heartbeat",
        ),
    ],
)
def test_admit_exported(records: list[Record], probe: Record, exported: bool) -> None:
    full = state(*records)
    assert admit_exported(full[probe.key()], full) is exported


def test_flipping_shared_adds_and_removes_the_endpoints_incrementally() -> None:
    view = View(ViewName.EXPORT)
    full = state(service("alpha", shared=False), endpoint("alpha", 1), endpoint("alpha", 2))
    for key in full:
        view.reconsider(key, full)
    assert view.items == {}
    svc = service("alpha")
    full[svc.key()] = item(svc, 2)
    eps = [endpoint("alpha", 1).key(), endpoint("alpha", 2).key()]
    events = view.reconsider(svc.key(), full, eps)
    assert [(e.key, e.item is not None) for e in events] == [(svc.key(), True)] + [
        (k, True) for k in eps
    ]
    # An update that keeps it exported touches only the service itself.
    full[svc.key()] = item(svc, 3)
    assert [e.key for e in view.reconsider(svc.key(), full, eps)] == [svc.key()]
    full[svc.key()] = item(service("alpha", shared=False), 4)
    events = view.reconsider(svc.key(), full, eps)
    assert [(e.key, e.item is None) for e in events] == [(svc.key(), True)] + [
        (k, True) for k in eps
    ]
    assert view.items == {}


def test_incremental_view_equals_the_view_computed_at_once() -> None:
    full = state(
        service("alpha"),
        service("alpha", "hidden", shared=False, vip="10.96.0.11"),
        *[endpoint("alpha", i) for i in range(5)],
        *[endpoint("alpha", i + 10, service="hidden") for i in range(5)],
        peer("alpha", "beta", id_=2),
    )
    view = View(ViewName.EXPORT)
    for key in full:
        view.reconsider(key, full)
    assert view.items == view_of(ViewName.EXPORT, full)
    assert {kind_of_key(k) for k in view.items} == {Kind.SERVICE, Kind.ENDPOINT}


def test_diff_views_compares_values() -> None:
    old = state(endpoint("alpha", 1), endpoint("alpha", 2))
    changed = endpoint("alpha", 2).model_copy(update={"ready": False})
    new = state(endpoint("alpha", 2), endpoint("alpha", 3))
    new[changed.key()] = item(changed, 9)
    events = {(e.key, e.item is None) for e in diff_views(old, new)}
    assert events == {
        (endpoint("alpha", 1).key(), True),
        (changed.key(), False),
        (endpoint("alpha", 3).key(), False),
    }
