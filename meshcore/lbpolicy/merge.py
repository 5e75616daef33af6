"""Merge one service's backends across cells: eligibility, port matching, health, affinity.

Flow: every cell's records and peer state -> ``cell_source`` (``sources``) groups a ref's
service and endpoint records into one ``CellSource`` per contributing cell -> ``merge_service``
-> the node agent's desired LB state, or ``meshctl explain``'s table.
The local cell's service owns the VIPs and decides: not global -> its own backends only; global ->
also the backends of every cell whose same-named service is global and shared. Each local frontend
gets its selected backends (``select_backends``: health, then the local service's affinity) and a
decision with a ``Reason`` for every candidate endpoint, which ``meshctl explain`` prints.
Pure: no IO, no asyncio, no logging. Output order never depends on input order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from meshcore.lbpolicy.sources import CellSource, ServiceRef
from meshcore.model.names import CellId
from meshcore.model.records import Affinity, Endpoint, EndpointPort, Frontend, Service

__all__ = [
    "SELECTED_REASONS",
    "BackendDecision",
    "BackendState",
    "Counts",
    "MergedBackend",
    "MergedFrontend",
    "MergedService",
    "Pool",
    "Reason",
    "backend_state",
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


class BackendState(StrEnum):
    """The health of a backend, from its endpoint's conditions."""

    ACTIVE = "active"  # ready and not terminating
    TERMINATING = "terminating"  # terminating and still serving
    UNHEALTHY = "unhealthy"  # anything else: never selected


@dataclass(frozen=True)
class MergedBackend:
    """One backend of one frontend: an endpoint address and its port matched to the frontend."""

    cell: str
    cell_id: CellId
    address: IPv4Address | IPv6Address
    port: int
    protocol: str
    local: bool
    state: BackendState
    stale: bool
    updated_at: float


class Reason(StrEnum):
    """Why a candidate endpoint was or was not selected; ``describe()`` gives the sentence."""

    SELECTED = "selected"
    SELECTED_SPILLOVER = "selected-spillover"
    SELECTED_TERMINATING = "selected-terminating"
    PREFERRED_LOCAL_ACTIVE = "preferred-local-active"
    PREFERRED_REMOTE_ACTIVE = "preferred-remote-active"
    PREFERRED_LOCAL_TERMINATING = "preferred-local-terminating"
    PREFERRED_REMOTE_TERMINATING = "preferred-remote-terminating"
    NOT_READY = "not-ready"
    TERMINATING_UNUSED = "terminating-unused"
    LOCAL_NOT_GLOBAL = "local-not-global"
    REMOTE_NO_SERVICE = "remote-no-service"
    REMOTE_NOT_GLOBAL = "remote-not-global"
    REMOTE_NOT_SHARED = "remote-not-shared"
    NO_MATCHING_PORT = "no-matching-port"

    def describe(self) -> str:
        """A sentence for humans (``meshctl explain``)."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: Mapping[Reason, str] = {
    Reason.SELECTED: "active: selected",
    Reason.SELECTED_SPILLOVER: (
        "active: selected because no backend of the preferred side (affinity) is active"
    ),
    Reason.SELECTED_TERMINATING: "terminating but serving: selected because no backend is active",
    Reason.PREFERRED_LOCAL_ACTIVE: "affinity local: a local backend is active",
    Reason.PREFERRED_REMOTE_ACTIVE: "affinity remote: a remote backend is active",
    Reason.PREFERRED_LOCAL_TERMINATING: (
        "no backend is active and affinity local: the local terminating backends are used"
    ),
    Reason.PREFERRED_REMOTE_TERMINATING: (
        "no backend is active and affinity remote: the remote terminating backends are used"
    ),
    Reason.NOT_READY: "not ready, and not a serving terminating backend: never used",
    Reason.TERMINATING_UNUSED: "terminating; used only when nothing else is left",
    Reason.LOCAL_NOT_GLOBAL: "service is not global in this cell: local backends only",
    Reason.REMOTE_NO_SERVICE: "that cell has no record of this service: its endpoints are ignored",
    Reason.REMOTE_NOT_GLOBAL: "service is not global in that cell: its backends are not exported",
    Reason.REMOTE_NOT_SHARED: "service is not shared (shared=false) in that cell",
    Reason.NO_MATCHING_PORT: "the endpoint has no port matching this frontend",
}

SELECTED_REASONS = frozenset(
    {Reason.SELECTED, Reason.SELECTED_SPILLOVER, Reason.SELECTED_TERMINATING}
)
"""The reasons of selected backends; every other reason means "not selected"."""


@dataclass(frozen=True)
class BackendDecision:
    """What became of one candidate endpoint for one frontend."""

    backend: MergedBackend | None  # None when no port matched
    cell: str
    address: str
    selected: bool
    reason: Reason


@dataclass(frozen=True)
class MergedFrontend:
    """A local frontend, its selected backends and a decision for every candidate endpoint."""

    frontend: Frontend  # the local service's frontend
    backends: tuple[MergedBackend, ...]  # selected; sorted by (cell, address, port)
    decisions: tuple[BackendDecision, ...]  # sorted by (cell, address)


@dataclass(frozen=True)
class MergedService:
    """A service as the local cell programs it; ``global_`` and ``affinity`` are the local ones."""

    ref: ServiceRef
    affinity: Affinity
    global_: bool
    frontends: tuple[MergedFrontend, ...]
    warnings: tuple[str, ...]


def backend_state(endpoint: Endpoint) -> BackendState:
    """ACTIVE when ready and not terminating; TERMINATING when terminating and serving."""
    if endpoint.ready and not endpoint.terminating:
        return BackendState.ACTIVE
    if endpoint.terminating and endpoint.serving:
        return BackendState.TERMINATING
    return BackendState.UNHEALTHY


def match_port(frontend: Frontend, endpoint: Endpoint) -> EndpointPort | None:
    """The endpoint port that serves ``frontend``, or None.

    A named frontend takes the port of the same name and protocol. An unnamed one takes the
    endpoint's only unnamed port of its protocol (the target port may differ from the VIP's);
    failing that, the port (named or not) with the frontend's number and protocol.
    """
    same_protocol = [p for p in endpoint.ports if p.protocol == frontend.protocol]
    if frontend.name:
        return next((p for p in same_protocol if p.name == frontend.name), None)
    unnamed = [p for p in same_protocol if not p.name]
    if len(unnamed) == 1:
        return unnamed[0]
    return next((p for p in same_protocol if p.port == frontend.port), None)


def _backend_order(backend: MergedBackend) -> tuple[str, int, int, int, str]:
    # Version first: IPv4 and IPv6 addresses do not compare with each other.
    address = backend.address
    return (backend.cell, address.version, int(address), backend.port, backend.protocol)


def _endpoint_order(endpoint: Endpoint) -> tuple[int, int]:
    return (endpoint.address.version, int(endpoint.address))


class Pool(NamedTuple):
    """Which candidates a frontend uses: the ones in ``state`` on ``side`` (None: both sides).

    A function of the candidates' counts per (state, local) only, so an incremental merge
    recomputes it in O(1) per change and re-selects everything only when it changes.
    """

    state: BackendState | None  # ACTIVE, TERMINATING, or None: nothing to select
    side: bool | None  # True: local only, False: remote only, None: both
    spilled: bool  # affinity wanted a side that has nothing in the pool


Counts = Mapping[tuple[BackendState, bool], int]  # candidates per (state, local)


def choose_pool(counts: Counts, affinity: Affinity) -> Pool:
    """ACTIVE candidates, else TERMINATING ones; then affinity's side when it has any."""
    for state in (BackendState.ACTIVE, BackendState.TERMINATING):
        local, remote = counts.get((state, True), 0), counts.get((state, False), 0)
        if not local and not remote:
            continue
        if affinity is Affinity.LOCAL and local:
            return Pool(state, True, spilled=False)
        if affinity is Affinity.REMOTE and remote:
            return Pool(state, False, spilled=False)
        return Pool(state, None, spilled=affinity is not Affinity.NONE)
    return Pool(None, None, spilled=False)


def in_pool(backend: MergedBackend, pool: Pool) -> bool:
    """Whether the pool selects ``backend``."""
    return backend.state is pool.state and (pool.side is None or backend.local is pool.side)


def count_candidates(candidates: Iterable[MergedBackend]) -> Counter[tuple[BackendState, bool]]:
    return Counter((b.state, b.local) for b in candidates)


def select_backends(
    candidates: Sequence[MergedBackend], affinity: Affinity
) -> tuple[list[MergedBackend], dict[MergedBackend, Reason]]:
    """The backends to use, sorted, and a reason for every candidate.

    The pool is the ACTIVE candidates, or the TERMINATING ones when none is active (a connection
    to a draining backend beats a refused one). Within the pool, affinity ``local`` (``remote``)
    uses the local (remote) backends when there is at least one, else the whole pool; ``none``
    uses the whole pool. UNHEALTHY backends are never used. No pool: nothing is selected.
    """
    ordered = sorted(candidates, key=_backend_order)
    pool = choose_pool(count_candidates(ordered), affinity)
    if pool.state is BackendState.ACTIVE:
        selected_reason = Reason.SELECTED_SPILLOVER if pool.spilled else Reason.SELECTED
        passed_over = (
            Reason.PREFERRED_LOCAL_ACTIVE
            if affinity is Affinity.LOCAL
            else Reason.PREFERRED_REMOTE_ACTIVE
        )
    else:
        selected_reason = Reason.SELECTED_TERMINATING
        passed_over = (
            Reason.PREFERRED_LOCAL_TERMINATING
            if affinity is Affinity.LOCAL
            else Reason.PREFERRED_REMOTE_TERMINATING
        )
    chosen: list[MergedBackend] = []
    reasons: dict[MergedBackend, Reason] = {}
    for backend in ordered:
        if in_pool(backend, pool):
            chosen.append(backend)
            reasons[backend] = selected_reason
        elif backend.state is pool.state:
            reasons[backend] = passed_over
        elif backend.state is BackendState.TERMINATING:
            reasons[backend] = Reason.TERMINATING_UNUSED
        else:
            reasons[backend] = Reason.NOT_READY
    return chosen, reasons


def check_sources(ref: ServiceRef, sources: Mapping[str, CellSource]) -> CellSource:
    """The local source; ValueError when the caller broke the grouping contract."""
    for key, source in sources.items():
        if key != source.cell:
            raise ValueError(f"source for cell {source.cell!r} is filed under {key!r}")
        service = source.service
        if service is not None and (
            service.cell != source.cell or (service.namespace, service.name) != ref
        ):
            raise ValueError(
                f"cell {source.cell!r}: service {service.cell}/{service.namespace}/"
                f"{service.name} does not belong to {ref.namespace}/{ref.name}"
            )
        for endpoint in source.endpoints.values():
            if endpoint.cell != source.cell or (endpoint.namespace, endpoint.service) != ref:
                raise ValueError(
                    f"cell {source.cell!r}: endpoint {endpoint.key()} does not belong to "
                    f"{ref.namespace}/{ref.name}"
                )
    local = [source for source in sources.values() if source.local]
    if len(local) != 1:
        cells = sorted(source.cell for source in local)
        raise ValueError(f"exactly one source must be local, got {len(local)}: {cells}")
    return local[0]


def exclusion(source: CellSource, local_service: Service) -> Reason | None:
    """Why none of ``source``'s endpoints may be used, or None when they are candidates."""
    if source.local:
        return None
    if not local_service.global_:
        return Reason.LOCAL_NOT_GLOBAL
    if source.service is None:
        # Endpoints may arrive before their service record; they wait for it, silently.
        return Reason.REMOTE_NO_SERVICE
    if not source.service.global_:
        return Reason.REMOTE_NOT_GLOBAL
    if not source.service.shared:
        return Reason.REMOTE_NOT_SHARED
    return None


def frontend_label(frontend: Frontend) -> str:
    """``VIP:PORT/PROTOCOL``, the VIP in brackets when it is IPv6."""
    vip = f"[{frontend.vip}]" if frontend.vip.version == 6 else str(frontend.vip)
    return f"{vip}:{frontend.port}/{frontend.protocol}"


def _port_labels(frontends: Iterable[Frontend]) -> list[str]:
    ports = {(f.name, f.port, f.protocol) for f in frontends}
    return [f"{name + ':' if name else ''}{port}/{proto}" for name, port, proto in sorted(ports)]


def _port_warning(remote_service: Service, local_service: Service) -> str | None:
    """A warning when an exported remote service's ports differ from the local service's."""
    local_ports = _port_labels(local_service.frontends)
    remote_ports = _port_labels(remote_service.frontends)
    if local_ports == remote_ports:
        return None
    return (
        f"cell {remote_service.cell!r} publishes ports [{', '.join(remote_ports)}], this cell "
        f"[{', '.join(local_ports)}]; its backends are matched to the local frontends"
    )


def merged_backend(
    frontend: Frontend, source: CellSource, endpoint: Endpoint
) -> MergedBackend | None:
    """``endpoint`` as a backend of ``frontend``; None when no port of it serves the frontend."""
    port = match_port(frontend, endpoint)
    if port is None:
        return None
    return MergedBackend(
        cell=source.cell,
        cell_id=source.cell_id,
        address=endpoint.address,
        port=port.port,
        protocol=port.protocol,
        local=source.local,
        state=backend_state(endpoint),
        stale=source.stale,
        updated_at=endpoint.updated_at,
    )


def _merge_frontend(
    frontend: Frontend,
    sources: Sequence[tuple[CellSource, Reason | None]],
    affinity: Affinity,
    warnings: list[str],
) -> MergedFrontend:
    rows: list[tuple[CellSource, Endpoint, MergedBackend | None, Reason | None]] = []
    for source, excluded in sources:
        for endpoint in sorted(source.endpoints.values(), key=_endpoint_order):
            rows.append((source, endpoint, merged_backend(frontend, source, endpoint), excluded))
    candidates = [b for _, _, b, excluded in rows if b is not None and excluded is None]
    selected, reasons = select_backends(candidates, affinity)
    for candidate in candidates:
        if candidate.address.version != frontend.vip.version:
            warnings.append(
                f"frontend {frontend_label(frontend)}: backend {candidate.address} of cell "
                f"{candidate.cell!r} is IPv{candidate.address.version}; listed, but the datapath "
                "may not reach it from this frontend"
            )
    decisions = []
    for source, endpoint, backend, excluded in rows:
        if excluded is not None:
            reason = excluded
        elif backend is None:
            reason = Reason.NO_MATCHING_PORT
        else:
            reason = reasons[backend]
        decisions.append(
            BackendDecision(
                backend=backend,
                cell=source.cell,
                address=str(endpoint.address),
                selected=reason in SELECTED_REASONS,
                reason=reason,
            )
        )
    return MergedFrontend(frontend=frontend, backends=tuple(selected), decisions=tuple(decisions))


def merge_service(ref: ServiceRef, sources: Mapping[str, CellSource]) -> MergedService | None:
    """The local cell's view of ``ref`` across ``sources`` (keyed by cell name).

    None when the local cell has no service record for ``ref``: the VIPs are the local cell's,
    so there is nothing to program. ValueError when not exactly one source is local, or when a
    source holds records of another cell or ref.
    """
    local_source = check_sources(ref, sources)
    local_service = local_source.service
    if local_service is None:
        return None
    warnings = list(local_service.warnings)
    ordered = sorted(sources.values(), key=lambda source: source.cell)
    judged = [(source, exclusion(source, local_service)) for source in ordered]
    for source, excluded in judged:
        if not source.local and excluded is None and source.service is not None:
            warning = _port_warning(source.service, local_service)
            if warning is not None:
                warnings.append(warning)
    frontends = tuple(
        _merge_frontend(frontend, judged, local_service.affinity, warnings)
        for frontend in local_service.frontends
    )
    return MergedService(
        ref=ref,
        affinity=local_service.affinity,
        global_=local_service.global_,
        frontends=frontends,
        warnings=tuple(dict.fromkeys(warnings)),  # dedupe, keep order
    )
