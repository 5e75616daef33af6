"""The storage of the Kubernetes API double: objects, one resourceVersion counter, a history.

Objects are kept per `ResourceType` under (namespace, name), and are never mutated once stored
(writers store new dicts), so events and lists can share them. Every change takes the next
global resourceVersion and appends an `Event` (with the object before the change) to a bounded
history; listeners (the open watches) are called with each event under the lock, so they see
events in order. The history lets a list be served at an older resourceVersion (the pages of a
paged list) and a watch resume from one; below the oldest version the history still holds, both
are ``410 Expired``. Thread-safe (one re-entrant lock); no asyncio, no HTTP.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshctl.lab.kubeapi.errors import KubeError
from meshctl.lab.kubeapi.objects import same_object
from meshctl.lab.kubeapi.resources import RESOURCES, ResourceType

__all__ = ["Event", "Listener", "Store"]

Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    rt: ResourceType
    obj: dict[str, Any]  # the object after the change (for DELETED: its last state, at rv)
    prev: dict[str, Any] | None  # the object before the change


Listener = Callable[[Event], None]


def _key_of(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return (metadata.get("namespace") or "", metadata["name"])


class Store:
    def __init__(self, *, history: int = 10_000, service_cidr: str = "10.96.0.0/12") -> None:
        self.lock = threading.RLock()
        self._rv = 0
        self._objects: dict[ResourceType, dict[Key, dict[str, Any]]] = {rt: {} for rt in RESOURCES}
        self._history: deque[Event] = deque()
        self._history_max = max(1, history)
        self._oldest = 0  # the history holds every event with rv > _oldest
        self._listeners: list[Listener] = []
        self._service_cidr = ipaddress.ip_network(service_cidr)
        self._next_ip_offset = 10

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (shared: do not mutate it)."""
        with self.lock:
            return self._objects[rt].get((namespace or "", name))

    def items(self, rt: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        """The stored objects of ``rt`` (in ``namespace`` if given), sorted by namespace/name."""
        with self.lock:
            return self._filter(self._objects[rt], namespace)

    @staticmethod
    def _filter(objects: dict[Key, dict[str, Any]], namespace: str | None) -> list[dict[str, Any]]:
        return [
            obj for key, obj in sorted(objects.items()) if namespace is None or key[0] == namespace
        ]

    def commit(
        self, rt: ResourceType, namespace: str | None, name: str, new: dict[str, Any] | None
    ) -> Event | None:
        """Store ``new`` (None: delete) under the next resourceVersion; None if nothing changed."""
        key = (namespace or "", name)
        with self.lock:
            old = self._objects[rt].get(key)
            if new is None:
                if old is None:
                    return None
                self._rv += 1
                final = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self._rv)}}
                del self._objects[rt][key]
                event = Event(self._rv, "DELETED", rt, final, old)
            else:
                if old is not None and same_object(old, new):
                    return None
                self._rv += 1
                stored = {**new, "metadata": {**new["metadata"], "resourceVersion": str(self._rv)}}
                self._objects[rt][key] = stored
                event = Event(self._rv, "ADDED" if old is None else "MODIFIED", rt, stored, old)
            self._history.append(event)
            while len(self._history) > self._history_max:
                self._oldest = self._history.popleft().rv
            for listener in list(self._listeners):
                listener(event)
            return event

    def list_at(
        self, rt: ResourceType, namespace: str | None, rv: int | None
    ) -> tuple[int, list[dict[str, Any]]]:
        """The objects of ``rt`` as they were at ``rv`` (None: now) and that resourceVersion."""
        with self.lock:
            if rv is None or rv >= self._rv:
                return self._rv, self._filter(self._objects[rt], namespace)
            self._check_available(rv)
            objects = dict(self._objects[rt])
            for event in reversed(self._history):
                if event.rv <= rv:
                    break
                if event.rt is not rt:
                    continue
                key = _key_of(event.obj)
                if event.prev is None:
                    objects.pop(key, None)
                else:
                    objects[key] = event.prev
            return rv, self._filter(objects, namespace)

    def _check_available(self, rv: int) -> None:
        if rv < self._oldest:
            raise KubeError.expired(f"too old resource version: {rv} ({self._oldest})")

    def subscribe(self, listener: Listener, from_rv: int | None) -> tuple[int, list[Event]]:
        """Register ``listener``; returns the current rv and the events after ``from_rv``.

        ``from_rv`` None: no replay (the caller lists the current objects itself, under the
        same lock: hold ``self.lock`` around both for an atomic start).
        """
        with self.lock:
            replay: list[Event] = []
            if from_rv is not None:
                self._check_available(from_rv)
                replay = [e for e in self._history if e.rv > from_rv]
            self._listeners.append(listener)
            return self._rv, replay

    def unsubscribe(self, listener: Listener) -> None:
        with self.lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def compact(self) -> int:
        """Forget the whole history; returns the current resourceVersion."""
        with self.lock:
            self._history.clear()
            self._oldest = self._rv
            return self._rv

    def allocate_cluster_ip(self) -> str:
        """The next free address of the service CIDR (under the lock of the write using it)."""
        with self.lock:
            used: set[str] = set()
            for rt, objects in self._objects.items():
                if rt.kind == "Service":
                    for obj in objects.values():
                        used.update((obj.get("spec") or {}).get("clusterIPs") or [])
            size = self._service_cidr.num_addresses
            for _ in range(size):
                offset = self._next_ip_offset
                self._next_ip_offset = offset + 1 if offset + 1 < size - 1 else 1
                address = str(self._service_cidr.network_address + offset)
                if address not in used:
                    return address
            raise KubeError(
                500, "InternalError", f"service CIDR {self._service_cidr} has no free address"
            )
