"""What each kind of watcher may see: the full view (own cell) and the export view (peers).

Pure. A view is the set of items a predicate admits from the cell's full state. Peers get the
export view: services that are global *and* shared, their endpoints, and the cell-wide kinds a
peer needs (cell config, heartbeat, nodes, identities, ip->identity, sync canaries); never the
connected-peers list nor the agents' status reports (`Kind.AGENT`). Both views are kept
incrementally: a change re-evaluates its own key, and a service whose exported flag flips
re-evaluates that service's endpoints (and nothing else).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from meshcore.model import Kind, Record, Service, endpoint_service_key, kind_of_key


class ViewName(StrEnum):
    FULL = "full"
    EXPORT = "export"


@dataclass(frozen=True, slots=True)
class Item:
    """A validated record as stored: its key, raw JSON, and etcd mod revision."""

    key: str
    kind: Kind
    value: bytes
    mod_revision: int
    record: Record


@dataclass(frozen=True, slots=True)
class ViewEvent:
    """A change of a view: `item` is None for a delete."""

    key: str
    kind: Kind
    item: Item | None


EXPORTED_KINDS = frozenset(
    {Kind.CELL, Kind.HEARTBEAT, Kind.NODE, Kind.IDENTITY, Kind.IP_IDENTITY, Kind.SYNCED}
)

Predicate = Callable[[Item, Mapping[str, Item]], bool]


def admit_all(item: Item, full: Mapping[str, Item]) -> bool:
    return True


def admit_exported(item: Item, full: Mapping[str, Item]) -> bool:
    """True when a peer may see item, given the cell's full state."""
    if item.kind in EXPORTED_KINDS:
        return True
    if item.kind is Kind.SERVICE:
        return isinstance(item.record, Service) and item.record.exported
    if item.kind is Kind.ENDPOINT:
        service = full.get(endpoint_service_key(item.key))
        return service is not None and admit_exported(service, full)
    return False


PREDICATES: Mapping[ViewName, Predicate] = {
    ViewName.FULL: admit_all,
    ViewName.EXPORT: admit_exported,
}


class View:
    """The items one predicate admits, kept in step with the full state."""

    def __init__(self, name: ViewName) -> None:
        self.name = name
        self.admits = PREDICATES[name]
        self.items: dict[str, Item] = {}

    def reconsider(
        self, key: str, full: Mapping[str, Item], related: Iterable[str] = ()
    ) -> list[ViewEvent]:
        """Re-evaluate key (and the keys it governs, e.g. a service's endpoints)."""
        events: list[ViewEvent] = []
        before = self.items.get(key)
        self._reconsider_one(key, full, events)
        after = self.items.get(key)
        if (before is not None) != (after is not None):
            for other in related:
                self._reconsider_one(other, full, events)
        return events

    def _reconsider_one(self, key: str, full: Mapping[str, Item], out: list[ViewEvent]) -> None:
        want = full.get(key)
        if want is not None and not self.admits(want, full):
            want = None
        have = self.items.get(key)
        if want is None:
            if have is not None:
                del self.items[key]
                out.append(ViewEvent(key, have.kind, None))
        elif have is not want:
            self.items[key] = want
            out.append(ViewEvent(key, want.kind, want))


def view_of(name: ViewName, full: Mapping[str, Item]) -> dict[str, Item]:
    """The whole view computed from a full state at once (for resume diffs and tests)."""
    admits = PREDICATES[name]
    return {k: it for k, it in full.items() if admits(it, full)}


def diff_views(old: Mapping[str, Item], new: Mapping[str, Item]) -> list[ViewEvent]:
    """Events that take a watcher holding `old` to `new` (by value, not identity)."""
    events = [
        ViewEvent(k, it.kind, it)
        for k, it in new.items()
        if (prev := old.get(k)) is None or prev.value != it.value
    ]
    events.extend(ViewEvent(k, kind_of_key(k), None) for k in old.keys() - new.keys())
    return events
