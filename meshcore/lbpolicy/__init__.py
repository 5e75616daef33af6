"""The load-balancing policy: which backends a node programs for a service, and why. Pure.

Flow: each cell's records and peer state -> ``sources.cell_source`` (what a cell contributes to
a service: nothing when dropped, stale-marked when stale) -> ``merge.merge_service`` (the full
merge with a ``Reason`` per candidate endpoint; ``meshctl explain`` prints it) or
``selection.ServiceSelection`` (the same rules kept incrementally per endpoint; the node agent
programs it). Shared by ``nodeagent`` and ``meshctl``; no IO, no asyncio, no logging.
"""

from meshcore.lbpolicy.merge import (
    SELECTED_REASONS,
    BackendDecision,
    BackendState,
    Counts,
    MergedBackend,
    MergedFrontend,
    MergedService,
    Pool,
    Reason,
    backend_state,
    check_sources,
    choose_pool,
    count_candidates,
    exclusion,
    frontend_label,
    in_pool,
    match_port,
    merge_service,
    merged_backend,
    select_backends,
)
from meshcore.lbpolicy.selection import FrontendDelta, ServiceSelection
from meshcore.lbpolicy.sources import (
    DROPPED_STATES,
    STALE_STATE,
    CellSource,
    ServiceRef,
    cell_source,
)

__all__ = [
    "DROPPED_STATES",
    "SELECTED_REASONS",
    "STALE_STATE",
    "BackendDecision",
    "BackendState",
    "CellSource",
    "Counts",
    "FrontendDelta",
    "MergedBackend",
    "MergedFrontend",
    "MergedService",
    "Pool",
    "Reason",
    "ServiceRef",
    "ServiceSelection",
    "backend_state",
    "cell_source",
    "check_sources",
    "choose_pool",
    "count_candidates",
    "exclusion",
    "frontend_label",
    "in_pool",
    "match_port",
    "merge_service",
    "merged_backend",
    "select_backends",
]
