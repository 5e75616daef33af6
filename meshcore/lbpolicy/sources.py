"""What one cell contributes to a service's merge: `ServiceRef`, `CellSource`, `cell_source`.

Flow: a cell's records (the agent's per-cell watch cache, or what ``meshctl explain`` read from
each cell's meshapi) and the cell's peer state as the node's agent sees it -> ``cell_source`` ->
a ``CellSource`` per cell (or nothing: a cell whose config is not known yet, or that the agent
dropped) -> ``merge_service`` / ``ServiceSelection``. One rule for the agent and for explain.
Pure: no IO, no asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from meshcore.model.names import CellId
from meshcore.model.records import Endpoint, Service

__all__ = ["DROPPED_STATES", "STALE_STATE", "CellSource", "ServiceRef", "cell_source"]

DROPPED_STATES: Final = frozenset({"revoked", "disconnected"})
"""Peer states whose cell contributes nothing to any merge (the agent drained its cache)."""
STALE_STATE: Final = "stale"
"""The peer state whose cell's last-known-good backends are kept, marked stale."""


class ServiceRef(NamedTuple):
    """A service's identity across cells: same namespace and name means the same service."""

    namespace: str
    name: str


@dataclass(frozen=True)
class CellSource:
    """What one cell publishes for the ref being merged; the caller grouped it by ref."""

    cell: str
    cell_id: CellId
    local: bool  # the agent's own cell
    service: Service | None  # this cell's record for the ref, if any
    endpoints: Mapping[str, Endpoint]  # keyed by address; keys are not read, only the records
    stale: bool = False  # peer lost; its last-known-good state is still used


def cell_source(
    *,
    cell: str,
    cell_id: CellId | None,
    local: bool,
    state: str,
    service: Service | None,
    endpoints: Mapping[str, Endpoint],
) -> CellSource | None:
    """What ``cell`` contributes to one service now; None while it contributes nothing.

    ``cell_id`` is None until the cell's config is known; ``state`` is the cell's peer state
    as the node's agent sees it (a ``PeerStateName``; any other text, such as "local" or
    "unknown", counts as live). ``service`` and ``endpoints`` (keyed by address) are the cell's
    records of that service.
    """
    if cell_id is None or state in DROPPED_STATES:
        return None
    return CellSource(
        cell=cell,
        cell_id=cell_id,
        local=local,
        service=service,
        endpoints=endpoints,
        stale=state == STALE_STATE,
    )
