"""`ServiceSelection`: one service's selected backends per local frontend, kept per endpoint.

Flow: the agent builds a selection when a service record (of any cell) or a cell's state changes
(`build`: O(endpoints)); an endpoint change then goes through `update`, which per frontend swaps
the endpoint's candidate, adjusts the counts per (state, local), re-chooses the pool (O(1)) and
returns what entered and left the selection (for the agent's desired LB state). Only when the
pool itself changes (the last active backend left, affinity spilled over or back) is a
frontend's selection recomputed whole. The rules are `merge`'s own helpers; `merge_service`
stays the full explanation (`meshctl explain`), and the tests hold both equal after random
change sequences.
Pure: no IO, no asyncio.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.lbpolicy.merge import (
    BackendState,
    MergedBackend,
    Pool,
    check_sources,
    choose_pool,
    exclusion,
    in_pool,
    merged_backend,
)
from meshcore.lbpolicy.sources import CellSource, ServiceRef
from meshcore.model.records import Affinity, Endpoint, Frontend, Service

__all__ = ["FrontendDelta", "ServiceSelection"]

EndpointKey = tuple[str, str]  # cell, address


@dataclass(frozen=True)
class FrontendDelta:
    """What entered and what left one frontend's selection (a changed backend is in both)."""

    frontend: Frontend
    added: tuple[MergedBackend, ...]
    removed: tuple[MergedBackend, ...]


@dataclass
class _FrontendIndex:
    frontend: Frontend
    candidates: dict[EndpointKey, MergedBackend] = field(default_factory=dict)
    counts: Counter[tuple[BackendState, bool]] = field(default_factory=Counter)
    pool: Pool = field(default_factory=lambda: Pool(None, None, spilled=False))

    def add(self, key: EndpointKey, backend: MergedBackend) -> None:
        self.candidates[key] = backend
        self.counts[(backend.state, backend.local)] += 1

    def selected(self) -> list[MergedBackend]:
        return [b for b in self.candidates.values() if in_pool(b, self.pool)]

    def replace(
        self, key: EndpointKey, new: MergedBackend | None, affinity: Affinity
    ) -> FrontendDelta | None:
        old = self.candidates.pop(key, None)
        if old is not None:
            self.counts[(old.state, old.local)] -= 1
        if new is not None:
            self.add(key, new)
        if old == new:
            return None
        pool = choose_pool(self.counts, affinity)
        removed: tuple[MergedBackend, ...]
        added: tuple[MergedBackend, ...]
        if pool == self.pool:
            removed = (old,) if old is not None and in_pool(old, pool) else ()
            added = (new,) if new is not None and in_pool(new, pool) else ()
        else:
            # The pool changed: every candidate may have entered or left (rare, O(endpoints)).
            before = {k: b for k, b in self.candidates.items() if in_pool(b, self.pool)}
            before.pop(key, None)
            if old is not None and in_pool(old, self.pool):
                before[key] = old
            self.pool = pool
            after = {k: b for k, b in self.candidates.items() if in_pool(b, pool)}
            removed = tuple(b for k, b in before.items() if after.get(k) != b)
            added = tuple(b for k, b in after.items() if before.get(k) != b)
        if not removed and not added:
            return None
        return FrontendDelta(self.frontend, added, removed)


class ServiceSelection:
    """The selected backends of ``ref``'s local frontends; ``service`` is the local record."""

    def __init__(self, ref: ServiceRef, service: Service) -> None:
        self.ref = ref
        self.service = service
        self._frontends = [_FrontendIndex(f) for f in service.frontends]

    @classmethod
    def build(cls, ref: ServiceRef, sources: Mapping[str, CellSource]) -> ServiceSelection | None:
        """From scratch, like `merge_service` (None when the local cell has no such service)."""
        local_service = check_sources(ref, sources).service
        if local_service is None:
            return None
        selection = cls(ref, local_service)
        for source in sources.values():
            if exclusion(source, local_service) is not None:
                continue
            for endpoint in source.endpoints.values():
                key = (source.cell, str(endpoint.address))
                for index in selection._frontends:
                    backend = merged_backend(index.frontend, source, endpoint)
                    if backend is not None:
                        index.add(key, backend)
        for index in selection._frontends:
            index.pool = choose_pool(index.counts, local_service.affinity)
        return selection

    def selected(self) -> list[tuple[Frontend, list[MergedBackend]]]:
        """Every local frontend with its selected backends (unordered)."""
        return [(index.frontend, index.selected()) for index in self._frontends]

    def update(
        self, source: CellSource, address: str, endpoint: Endpoint | None
    ) -> list[FrontendDelta]:
        """Take the current state of one endpoint of ``source`` (None: deleted).

        ``source`` must be what `build` would be given for its cell now: a change of any
        service record or of a cell's state needs a new `build`, not an update.
        """
        if endpoint is not None and (
            endpoint.cell != source.cell
            or (endpoint.namespace, endpoint.service) != self.ref
            or str(endpoint.address) != address
        ):
            raise ValueError(
                f"endpoint {endpoint.key()} is not {source.cell}/{self.ref.namespace}/"
                f"{self.ref.name} at {address}"
            )
        usable = endpoint is not None and exclusion(source, self.service) is None
        key = (source.cell, address)
        deltas = []
        for index in self._frontends:
            backend = None
            if usable and endpoint is not None:
                backend = merged_backend(index.frontend, source, endpoint)
            delta = index.replace(key, backend, self.service.affinity)
            if delta is not None:
                deltas.append(delta)
        return deltas
