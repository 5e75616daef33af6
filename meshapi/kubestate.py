"""The Kubernetes source's desired state and the diffs that move etcd to it (pure, no IO).

Fed one watch event (or one whole listing) at a time by `meshapi.kubesource`, `KubeState`
returns a `Diff`: the puts and deletes that change. Desired records are kept per *unit* -- one
Service, one Service's endpoint set, one Node, the peering ConfigMap -- as key -> bytes, so a
change costs O(that unit) and a record whose bytes did not change is not written again. An
EndpointSlice change recomputes only the records of the addresses it added, removed or changed
(all of the slice's when its ports changed), from the slices listing them: O(that slice), also
in a Service of thousands of endpoints. A Namespace annotation change re-translates that
namespace's Services only. A relist is mark-and-sweep: objects of the kind that are not in the
new listing are deleted, exactly those.

Malformed objects (`KubeObjectError`) are skipped and remembered in `bad` (latest error per
object, cleared when it is fixed or deleted) and counted; their last good records stay, so a
Service that became malformed keeps the record it had before.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from meshapi.kubeobjects import (
    PEERS_CONFIGMAP,
    KubeObjectError,
    ParsedSlice,
    endpoints_from_slices,
    namespace_is_global,
    node_record,
    object_ref,
    parse_endpoint_slice,
    peers_from_configmap,
    service_record,
)
from meshapi.views import Item
from meshcore.model import CellConfig, Endpoint, Kind, encode_record, endpoint_key, kind_of_key

__all__ = [
    "CANARY_WATCHES",
    "MAX_BAD_OBJECTS",
    "SOURCE_KINDS",
    "BadObject",
    "Diff",
    "KubeState",
    "WatchKind",
]

MAX_BAD_OBJECTS = 100

Address = IPv4Address | IPv6Address


class WatchKind(StrEnum):
    """The Kubernetes resources the source lists and watches."""

    SERVICES = "services"
    NAMESPACES = "namespaces"
    ENDPOINTSLICES = "endpointslices"
    NODES = "nodes"
    CONFIGMAPS = "configmaps"


# Each record kind's canary waits for the initial listing of these resources.
CANARY_WATCHES: dict[Kind, frozenset[WatchKind]] = {
    Kind.SERVICE: frozenset({WatchKind.SERVICES, WatchKind.NAMESPACES}),
    Kind.ENDPOINT: frozenset({WatchKind.ENDPOINTSLICES, WatchKind.SERVICES}),
    Kind.NODE: frozenset({WatchKind.NODES}),
    Kind.PEER: frozenset({WatchKind.CONFIGMAPS}),
}
SOURCE_KINDS = frozenset(CANARY_WATCHES)
"""The record kinds the Kubernetes source owns (admin writes of them are refused)."""


@dataclass
class Diff:
    """Puts and deletes, each key at most once (a later operation on a key replaces it)."""

    puts: dict[str, bytes] = field(default_factory=dict)
    deletes: dict[str, None] = field(default_factory=dict)
    errors: list[KubeObjectError] = field(default_factory=list)  # objects skipped as malformed

    def put(self, key: str, value: bytes) -> None:
        self.deletes.pop(key, None)
        self.puts[key] = value

    def delete(self, key: str) -> None:
        self.puts.pop(key, None)
        self.deletes[key] = None

    def only(self, kinds: Iterable[Kind]) -> Diff:
        """The part of the diff about records of `kinds`."""
        wanted = frozenset(kinds)
        return Diff(
            {k: v for k, v in self.puts.items() if kind_of_key(k) in wanted},
            {k: None for k in self.deletes if kind_of_key(k) in wanted},
        )

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


@dataclass(frozen=True, slots=True)
class BadObject:
    """A malformed object the source skips (latest error)."""

    watch: WatchKind
    ref: str
    error: str
    since: float

    def as_json(self) -> dict[str, object]:
        return {"kind": str(self.watch), "object": self.ref, "error": self.error}


Unit = tuple[str, ...]


class KubeState:
    def __init__(self, config: CellConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._objects: dict[WatchKind, dict[str, Mapping[str, Any]]] = {w: {} for w in WatchKind}
        self._units: dict[Unit, dict[str, bytes]] = {}
        self.desired: dict[str, bytes] = {}
        self._global_namespaces: set[str] = set()
        self._services_in: dict[str, set[str]] = {}  # namespace -> service refs
        self._slices: dict[str, ParsedSlice] = {}  # slice ref -> last good parse
        # (ns, service) -> address -> the refs of the slices listing it
        self._holders: dict[tuple[str, str], dict[Address, set[str]]] = {}
        self._endpoints: dict[str, Endpoint] = {}  # key -> record without updated_at
        self.bad: dict[tuple[WatchKind, str], BadObject] = {}
        self.bad_total: Counter[WatchKind] = Counter()

    def objects(self, watch: WatchKind) -> int:
        return len(self._objects[watch])

    # ---- events ---------------------------------------------------------------------------

    def apply(self, watch: WatchKind, event: str, obj: Mapping[str, Any]) -> Diff:
        """One watch event (ADDED, MODIFIED or DELETED) of resource `watch`."""
        diff = Diff()
        self._apply(watch, event == "DELETED", obj, diff)
        return diff

    def relist(self, watch: WatchKind, objects: Iterable[Mapping[str, Any]]) -> Diff:
        """A full listing of `watch`: apply every object, delete those no longer listed."""
        diff = Diff()
        stale = set(self._objects[watch])
        for obj in objects:
            stale.discard(object_ref(obj))
            self._apply(watch, False, obj, diff)
        for ref in sorted(stale):
            self._apply(watch, True, self._objects[watch][ref], diff)
        return diff

    def _apply(self, watch: WatchKind, deleted: bool, obj: Mapping[str, Any], diff: Diff) -> None:
        ref = object_ref(obj)
        if deleted:
            self._objects[watch].pop(ref, None)
        else:
            self._objects[watch][ref] = obj
        try:
            handler = _HANDLERS[watch]
            handler(self, ref, None if deleted else obj, diff)
        except KubeObjectError as e:
            self.bad_total[watch] += 1
            self.bad.pop((watch, ref), None)  # re-insert: the latest stays last
            self.bad[watch, ref] = BadObject(watch, ref, str(e), self._clock())
            while len(self.bad) > MAX_BAD_OBJECTS:
                del self.bad[next(iter(self.bad))]
            diff.errors.append(e)
            return
        self.bad.pop((watch, ref), None)

    def _set_unit(self, unit: Unit, records: Mapping[str, bytes], diff: Diff) -> None:
        old = self._units.pop(unit, {})
        for key, value in records.items():
            if old.get(key) != value:
                diff.put(key, value)
            self.desired[key] = value
        for key in old.keys() - records.keys():
            diff.delete(key)
            self.desired.pop(key, None)
        if records:
            self._units[unit] = dict(records)

    def _patch_unit(
        self, unit: Unit, puts: Mapping[str, bytes], deletes: Iterable[str], diff: Diff
    ) -> None:
        """Change some records of a unit, keep the rest (`_set_unit` for part of a unit)."""
        records = self._units.setdefault(unit, {})
        for key, value in puts.items():
            if records.get(key) != value:
                diff.put(key, value)
            records[key] = value
            self.desired[key] = value
        for key in deletes:
            if records.pop(key, None) is not None:
                diff.delete(key)
                self.desired.pop(key, None)
        if not records:
            del self._units[unit]

    # ---- per resource ---------------------------------------------------------------------

    def _service(self, ref: str, obj: Mapping[str, Any] | None, diff: Diff) -> None:
        namespace = ref.split("/", 1)[0]
        if obj is None:
            self._services_in.get(namespace, set()).discard(ref)
            self._set_unit(("svc", ref), {}, diff)
            return
        self._services_in.setdefault(namespace, set()).add(ref)
        record = service_record(
            obj, config=self.config, namespace_global=namespace in self._global_namespaces
        )
        self._set_unit(("svc", ref), {record.key(): encode_record(record)}, diff)

    def _namespace(self, ref: str, obj: Mapping[str, Any] | None, diff: Diff) -> None:
        is_global = obj is not None and namespace_is_global(obj)
        if is_global == (ref in self._global_namespaces):
            return
        if is_global:
            self._global_namespaces.add(ref)
        else:
            self._global_namespaces.discard(ref)
        services = self._objects[WatchKind.SERVICES]
        for service_ref in sorted(self._services_in.get(ref, ())):
            self._apply(WatchKind.SERVICES, False, services[service_ref], diff)

    def _endpoint_slice(self, ref: str, obj: Mapping[str, Any] | None, diff: Diff) -> None:
        parsed = None if obj is None else parse_endpoint_slice(obj, config=self.config)
        old = self._slices.pop(ref, None)
        if parsed is not None:
            self._slices[ref] = parsed
        for service in sorted({(s.namespace, s.service) for s in (old, parsed) if s is not None}):
            before = old if old is not None and (old.namespace, old.service) == service else None
            after = (
                parsed
                if parsed is not None and (parsed.namespace, parsed.service) == service
                else None
            )
            holders = self._holders.setdefault(service, {})
            for ep in before.endpoints if before is not None else ():
                refs = holders.get(ep.address)
                if refs is not None:
                    refs.discard(ref)
                    if not refs:
                        del holders[ep.address]
            for ep in after.endpoints if after is not None else ():
                holders.setdefault(ep.address, set()).add(ref)
            self._endpoint_set(service, _changed_addresses(before, after), diff)
            if not holders:
                del self._holders[service]

    def _endpoint_set(self, service: tuple[str, str], addresses: set[Address], diff: Diff) -> None:
        """Recompute the Endpoint records of `addresses` in `service` (the ones a slice change
        touched): O(the changed slice), not O(the service), whatever the service's size."""
        if not addresses:
            return
        namespace, name = service
        holders = self._holders.get(service, {})
        refs = sorted({r for a in addresses for r in holders.get(a, ())})
        views = [_only(self._slices[r], addresses) for r in refs]
        records = endpoints_from_slices(views, cell=self.config.name)
        unit = ("eps", *service)
        old = self._units.get(unit, {})
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        for address in sorted(addresses):
            key = endpoint_key(self.config.name, namespace, name, address)
            record = records.get(key)
            if record is None:
                self._endpoints.pop(key, None)
                deletes.append(key)
            elif self._endpoints.get(key) != record or key not in old:
                self._endpoints[key] = record
                puts[key] = encode_record(record.model_copy(update={"updated_at": self._clock()}))
        self._patch_unit(unit, puts, deletes, diff)

    def _node(self, ref: str, obj: Mapping[str, Any] | None, diff: Diff) -> None:
        if obj is None:
            self._set_unit(("node", ref), {}, diff)
            return
        record = node_record(obj, config=self.config)
        self._set_unit(("node", ref), {record.key(): encode_record(record)}, diff)

    def _configmap(self, ref: str, obj: Mapping[str, Any] | None, diff: Diff) -> None:
        if not ref.endswith("/" + PEERS_CONFIGMAP):
            return  # not the peering ConfigMap (the field selector should not send it)
        peers = [] if obj is None else peers_from_configmap(obj, config=self.config)
        self._set_unit(("peers",), {p.key(): encode_record(p) for p in peers}, diff)

    # ---- against the store ----------------------------------------------------------------

    def initial_diff(self, kind: Kind, stored: Mapping[str, Item]) -> Diff:
        """What moves the store's records of `kind` (`stored`: this cell's, by key) to the
        desired ones: records the source does not have are deleted; an endpoint that differs
        only in `updated_at` keeps the stored bytes (nothing rewritten after a restart)."""
        diff = Diff()
        for key, value in self.desired.items():
            if kind_of_key(key) is not kind:
                continue
            item = stored.get(key)
            if item is None or item.value == value:
                if item is None:
                    diff.put(key, value)
                continue
            if isinstance(item.record, Endpoint) and item.record.model_copy(
                update={"updated_at": 0.0}
            ) == self._endpoints.get(key):
                self._adopt(("eps", item.record.namespace, item.record.service), key, item.value)
                continue
            diff.put(key, value)
        for key, item in stored.items():
            if item.kind is kind and key not in self.desired:
                diff.delete(key)
        return diff

    def _adopt(self, unit: Unit, key: str, value: bytes) -> None:
        """Take the stored bytes of `key` (in `unit`) as desired: O(1), not a walk of units."""
        self.desired[key] = value
        records = self._units.get(unit)
        if records is not None and key in records:
            records[key] = value

    def records_of(self, kinds: Iterable[Kind]) -> dict[str, bytes]:
        wanted = frozenset(kinds)
        return {k: v for k, v in self.desired.items() if kind_of_key(k) in wanted}


def _changed_addresses(before: ParsedSlice | None, after: ParsedSlice | None) -> set[Address]:
    """The addresses whose records a slice change can touch: those it added, removed or
    changed, or all of the slice's when its ports changed."""
    if before is None or after is None or before.ports != after.ports:
        return {e.address for s in (before, after) if s is not None for e in s.endpoints}
    return {e.address for e in set(before.endpoints) ^ set(after.endpoints)}


def _only(parsed: ParsedSlice, addresses: set[Address]) -> ParsedSlice:
    """The slice with only the endpoints of `addresses` (records merge per address)."""
    kept = tuple(e for e in parsed.endpoints if e.address in addresses)
    return dataclasses.replace(parsed, endpoints=kept)


_HANDLERS: dict[WatchKind, Callable[[KubeState, str, Mapping[str, Any] | None, Diff], None]] = {
    WatchKind.SERVICES: KubeState._service,
    WatchKind.NAMESPACES: KubeState._namespace,
    WatchKind.ENDPOINTSLICES: KubeState._endpoint_slice,
    WatchKind.NODES: KubeState._node,
    WatchKind.CONFIGMAPS: KubeState._configmap,
}
