"""``meshctl explain service NS/NAME --node CELL/NODE``: why each backend is (not) in a node's maps.

Flow: the contexts file -> the context of CELL (``--context``, or ``--kube-context``: the cell
behind a kube context's meshapi Service; else the one whose meshapi says it is CELL) -> that cell's
service, endpoints, Peer records, Node and ``AgentStatus`` records -> for every peer, the context
of the peer cell (found the same way, among the meshctl contexts and the kube contexts ``meshctl
install`` set up from here; a missing or unreachable one is reported, never fatal) -> its service
and endpoints -> ``explain_service`` (pure: ``meshcore.lbpolicy.cell_source`` with the peer states
of the node's agent report -- the rule the agent uses -- then ``merge_service``) -> per frontend,
every candidate endpoint with its state, whether it is selected, and the reason sentence
(``Reason.describe()``) -> a table or JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from meshcore.client import MeshApiError, MeshClient
from meshcore.lbpolicy import (
    STALE_STATE,
    CellSource,
    MergedService,
    ServiceRef,
    cell_source,
    frontend_label,
    merge_service,
)
from meshcore.model import (
    AGENT_STATUS_STALE_AFTER,
    AgentStatus,
    CellId,
    Endpoint,
    Frontend,
    Kind,
    Node,
    Peer,
    Service,
)
from meshcore.tls import TlsConfigError
from meshctl.contexts import (
    DEFAULT_CONFIG_PATH,
    Context,
    ContextError,
    ContextSelection,
    load_config,
)
from meshctl.kube.access import installed_kube_contexts, kube_cell_context
from meshctl.kube.options import kube_cell, kube_options
from meshctl.output import format_table, output_option
from meshctl.status_commands import connecting_hint

__all__ = ["CellView", "Explanation", "Row", "explain_group", "explain_service"]

PARTIAL_STATES = frozenset({"connecting", "syncing"})
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class CellView:
    """What one cell publishes for the service: its record (if any) and its endpoints."""

    cell: str
    cell_id: CellId
    service: Service | None
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class Row:
    """One candidate endpoint of one frontend, as the node's agent judges it."""

    cell: str
    address: str
    port: int | None
    protocol: str
    state: str  # active / terminating / unhealthy, "-" when no port matches
    stale: bool
    selected: bool
    reason: str
    description: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FrontendRows:
    label: str  # "10.96.0.10:80/TCP (http)"
    rows: tuple[Row, ...]

    @property
    def selected(self) -> int:
        return sum(row.selected for row in self.rows)


@dataclass(frozen=True)
class Explanation:
    ref: ServiceRef
    cell: str
    node: str
    local: Service | None  # the node's cell's record: its VIPs and flags decide
    merged: MergedService | None
    peer_states: Mapping[str, str]  # cell -> state ("unknown" when there is no report)
    frontends: tuple[FrontendRows, ...]
    notes: tuple[str, ...] = field(default=())


def _state_of(peer_states: Mapping[str, str], cell: str) -> str:
    return peer_states.get(cell, "unknown")


def _dropped_rows(view: CellView, state: str, frontend: Frontend) -> list[Row]:
    """Rows for a cell the agent leaves out (revoked, disconnected): listed, never used."""
    reason = f"that cell is {state} for this agent: not used"
    return [
        Row(view.cell, str(ep.address), None, frontend.protocol, "-", stale=False,
            selected=False, reason=f"peer-{state}", description=reason)
        for ep in view.endpoints
    ]  # fmt: skip


def explain_service(
    ref: ServiceRef,
    *,
    cell: str,
    node: str,
    views: Mapping[str, CellView],
    peer_states: Mapping[str, str],
    notes: Sequence[str] = (),
    addresses: Mapping[str, str] | None = None,
) -> Explanation:
    """The node's view of ``ref``: ``views`` by cell (``cell``'s own view included) and the
    agent's peer states (cell -> state; empty when the agent has not reported); ``addresses``:
    each peer's meshapi address from the Peer records. Pure."""
    notes = list(notes)
    addresses = addresses or {}
    peers = sorted(c for c in views if c != cell)
    if peers and not peer_states:
        notes.append("peer states unknown (no agent report)")
    sources: dict[str, CellSource] = {}
    dropped: list[CellView] = []
    for name in sorted(views):
        view = views[name]
        state = "local" if name == cell else _state_of(peer_states, name)
        source = cell_source(
            cell=name,
            cell_id=view.cell_id,
            local=name == cell,
            state=state,
            service=view.service,
            endpoints={str(ep.address): ep for ep in view.endpoints},
        )
        if source is None:
            notes.append(f"cell {name!r} is {state} for this agent: its backends are not used")
            dropped.append(view)
            continue
        if state in PARTIAL_STATES:
            notes.append(f"cell {name!r} is {state}: the agent may not hold all its records yet")
        if state == "connecting" and name in addresses:
            notes.append(f"cell {name!r} is connecting: {connecting_hint(name, addresses[name])}")
        if state == STALE_STATE:
            notes.append(f"cell {name!r} is stale: its last-known-good backends are kept")
        sources[name] = source
    merged = merge_service(ref, sources)
    frontends = []
    for frontend in merged.frontends if merged is not None else ():
        rows = [
            Row(
                cell=d.cell,
                address=d.address,
                port=d.backend.port if d.backend else None,
                protocol=d.backend.protocol if d.backend else frontend.frontend.protocol,
                state=d.backend.state.value if d.backend else "-",
                stale=d.backend.stale if d.backend else False,
                selected=d.selected,
                reason=d.reason.value,
                description=d.reason.describe(),
            )
            for d in frontend.decisions
        ]
        for view in dropped:
            rows += _dropped_rows(view, _state_of(peer_states, view.cell), frontend.frontend)
        f = frontend.frontend
        label = frontend_label(f) + (f" ({f.name})" if f.name else "")
        frontends.append(FrontendRows(label, tuple(rows)))
    states = {c: _state_of(peer_states, c) for c in peers}
    local = views[cell].service if cell in views else None
    return Explanation(ref, cell, node, local, merged, states, tuple(frontends), tuple(notes))


# ---- reading the cells ----------------------------------------------------------------------


def _client(ctx: Context) -> MeshClient:
    return MeshClient(ctx.server, ctx.tls_dir, server_name=ctx.server_name)


async def _cell_of(ctx: Context) -> str:
    async with _client(ctx) as client:
        return (await client.get_cell(timeout=PROBE_TIMEOUT)).config.name


async def _discover(contexts: Sequence[Context]) -> tuple[dict[str, Context], dict[str, str]]:
    """Cell name -> context (asking each context's meshapi), and context -> why it failed."""

    async def probe(ctx: Context) -> str | Exception:
        try:
            return await asyncio.wait_for(_cell_of(ctx), PROBE_TIMEOUT + 1)
        except (MeshApiError, TlsConfigError, TimeoutError) as e:
            return e

    answers = await asyncio.gather(*(probe(ctx) for ctx in contexts))
    found: dict[str, Context] = {}
    failed: dict[str, str] = {}
    for ctx, answer in zip(contexts, answers, strict=True):
        if isinstance(answer, Exception):
            failed[ctx.name] = str(answer) or type(answer).__name__
        else:
            found.setdefault(answer, ctx)
    return found, failed


def _missing(cell: str, failed: Mapping[str, str], config: str) -> str:
    tried = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
    return f"no reachable context for cell {cell!r} in {config}" + (
        f" (unreachable: {tried})" if tried else ""
    )


async def _read(ctx: Context, kinds: Sequence[Kind]) -> tuple[CellId, list[Any]]:
    async with _client(ctx) as client:
        info = await client.get_cell()
        records, _ = await client.list(kinds)
    return info.config.id, [record for _, record in records]


def _view(cell: str, cell_id: CellId, records: Sequence[Any], ref: ServiceRef) -> CellView:
    service = next(
        (r for r in records if isinstance(r, Service) and (r.namespace, r.name) == ref), None
    )
    endpoints = tuple(
        r for r in records if isinstance(r, Endpoint) and (r.namespace, r.service) == ref
    )
    return CellView(cell, cell_id, service, endpoints)


async def gather(
    selection: ContextSelection,
    context_name: str | None,
    ref: ServiceRef,
    cell: str,
    node: str,
    *,
    kube: Context | None = None,
    kube_peers: Sequence[Context] = (),
    kube_failed: Mapping[str, str] | None = None,
) -> Explanation:
    """Read every cell and explain; ContextError / MeshApiError when the node's cell fails.

    ``kube``: the node's cell by kube context; ``kube_peers``: the other installed kube
    contexts' cells, candidates for the peers (``kube_failed``: those that did not resolve).
    """
    config = load_config(selection.config_path)
    where = str(selection.config_path)
    candidates = [config.contexts[n] for n in sorted(config.contexts)] + list(kube_peers)
    if kube is not None or context_name is not None:
        own = kube if kube is not None else config.get(str(context_name))
        actual = await _cell_of(own)
        if actual != cell:
            raise ContextError(f"context {own.name!r} is cell {actual!r}, not {cell!r}")
        found: dict[str, Context] = {cell: own}
        failed: dict[str, str] = {}
    else:
        found, failed = await _discover(candidates)
        if cell not in found:
            raise ContextError(_missing(cell, failed, where))
    kinds = [Kind.SERVICE, Kind.ENDPOINT, Kind.PEER, Kind.NODE, Kind.AGENT]
    cell_id, records = await _read(found[cell], kinds)
    views = {cell: _view(cell, cell_id, records, ref)}
    notes: list[str] = []
    if not any(isinstance(r, Node) and r.name == node for r in records):
        notes.append(f"node {node!r} has no node record in cell {cell!r} (not registered?)")
    status = next((r for r in records if isinstance(r, AgentStatus) and r.node == node), None)
    peer_states: dict[str, str] = {}
    if status is not None:
        peer_states = {r.cell: r.state for r in status.peers if not r.local}
        age = time.time() - status.updated_at
        if age > AGENT_STATUS_STALE_AFTER:
            notes.append(f"the agent's report is {age:.0f}s old: peer states may be out of date")
    peers = sorted((r for r in records if isinstance(r, Peer)), key=lambda p: p.name)
    if (context_name is not None or kube is not None) and peers:
        more, failed = await _discover(candidates)
        found = {**more, cell: found[cell]}
    failed = {**(kube_failed or {}), **failed}
    for peer in peers:
        ctx = found.get(peer.name)
        if ctx is None:
            notes.append(f"cell {peer.name!r}: {_missing(peer.name, failed, where)}; not shown")
            continue
        try:
            peer_id, peer_records = await _read(ctx, [Kind.SERVICE, Kind.ENDPOINT])
        except (MeshApiError, TlsConfigError) as e:
            notes.append(f"cell {peer.name!r} (context {ctx.name!r}): {e}; not shown")
            continue
        if peer_id != peer.id:
            notes.append(
                f"cell {peer.name!r} has id {peer_id}, but {cell!r}'s Peer record says {peer.id}: "
                "the agent refuses that cell"
            )
        views[peer.name] = _view(peer.name, peer_id, peer_records, ref)
    return explain_service(
        ref,
        cell=cell,
        node=node,
        views=views,
        peer_states=peer_states,
        notes=notes,
        addresses={p.name: p.address for p in peers},
    )


# ---- output ---------------------------------------------------------------------------------


def _flags(service: Service) -> str:
    if not service.global_:
        return "not global"
    return f"global, {'shared' if service.shared else 'not shared'}, affinity {service.affinity}"


def explanation_json(ex: Explanation) -> dict[str, Any]:
    merged, local = ex.merged, ex.local
    return {
        "service": f"{ex.ref.namespace}/{ex.ref.name}",
        "node": f"{ex.cell}/{ex.node}",
        "cell": ex.cell,
        "global": local.global_ if local else None,
        "shared": local.shared if local else None,
        "affinity": local.affinity.value if local else None,
        "peer_states": dict(ex.peer_states),
        "frontends": [
            {
                "frontend": f.label,
                "selected": f.selected,
                "backends": [row.as_json() for row in f.rows],
            }
            for f in ex.frontends
        ],
        "warnings": list(merged.warnings) if merged else [],
        "notes": list(ex.notes),
    }


def explanation_text(ex: Explanation) -> str:
    flags = _flags(ex.local) if ex.local is not None else "no such service"
    lines = [
        f"Service {ex.ref.namespace}/{ex.ref.name} as node {ex.cell}/{ex.node} programs it "
        f"(cell {ex.cell!r}: {flags})"
    ]
    if ex.peer_states:
        shown = ", ".join(f"{c} {s}" for c, s in sorted(ex.peer_states.items()))
        lines.append(f"peers: {shown}")
    for f in ex.frontends:
        lines += ["", f"Frontend {f.label}: {f.selected} of {len(f.rows)} endpoints selected"]
        if not f.rows:
            lines.append("  no endpoints in any cell")
            continue
        rows = [
            (
                r.cell,
                r.address,
                str(r.port) if r.port is not None else "-",
                r.state + (" (stale)" if r.stale else ""),
                "yes" if r.selected else "no",
                r.description,
            )
            for r in f.rows
        ]
        headers = ("CELL", "ADDRESS", "PORT", "STATE", "SELECTED", "REASON")
        lines.append(format_table(headers, rows))
    if not ex.frontends:
        lines.append("The service has no frontends (headless): nothing is programmed.")
    lines.append("")
    lines += [f"warning: {w}" for w in (ex.merged.warnings if ex.merged else ())]
    lines += [f"note: {n}" for n in ex.notes]
    return "\n".join(lines).rstrip()


def _kube_candidates(
    selection: ContextSelection, own: str, kubeconfig: Path | None
) -> tuple[list[Context], dict[str, str]]:
    """The cells of the other kube contexts installed from here, and why some did not resolve."""
    found: list[Context] = []
    failed: dict[str, str] = {}
    for name in installed_kube_contexts(selection.config_path):
        if name == own:
            continue
        try:
            found.append(
                kube_cell_context(name, config_path=selection.config_path, kubeconfig=kubeconfig)
            )
        except ContextError as e:
            failed[name] = str(e)
    return found, failed


def _split(value: str, what: str, example: str) -> tuple[str, str]:
    left, slash, right = value.partition("/")
    if not slash or not left or not right or "/" in right:
        raise click.UsageError(f"{what} {value!r} is not {example}")
    return left, right


@click.group("explain")
def explain_group() -> None:
    """Explain what the datapath does, and why."""


@explain_group.command("service")
@click.argument("service_ref", metavar="NS/NAME")
@click.option("--node", "node_ref", required=True, metavar="CELL/NODE", help="The node to explain.")
@click.option(
    "--context",
    "context_name",
    metavar="NAME",
    help="The context of the node's cell [default: the context whose meshapi is that cell].",
)
@kube_options
@output_option()
@click.pass_context
def explain_service_command(
    click_ctx: click.Context,
    service_ref: str,
    node_ref: str,
    context_name: str | None,
    kube_context: str | None,
    endpoint: str | None,
    kubeconfig: Path | None,
    output: str,
) -> None:
    """Every backend of a service in every cell, and why it is or is not in a node's maps.

    With --kube-context the node's cell is that kube context's; the peers' cells are looked
    for among the meshctl contexts and the kube contexts 'meshctl install' set up.
    """
    ref = ServiceRef(*_split(service_ref, "service", "NAMESPACE/NAME"))
    cell, node = _split(node_ref, "--node", "CELL/NODE")
    root = click_ctx.find_root().obj
    selection = (
        root
        if isinstance(root, ContextSelection)
        else ContextSelection(DEFAULT_CONFIG_PATH.expanduser())
    )
    try:
        kube = kube_cell(
            selection.config_path,
            kube_context=kube_context,
            endpoint=endpoint,
            kubeconfig=kubeconfig,
            context_name=context_name,
        )
        kube_peers, kube_failed = (
            _kube_candidates(selection, kube.name, kubeconfig) if kube else ([], {})
        )
        ex = asyncio.run(
            gather(
                selection,
                context_name,
                ref,
                cell,
                node,
                kube=kube,
                kube_peers=kube_peers,
                kube_failed=kube_failed,
            )
        )
    except ContextError as e:
        raise click.ClickException(str(e)) from e
    except (MeshApiError, TlsConfigError) as e:
        raise click.ClickException(f"cell {cell!r}: {e}") from e
    if ex.merged is None or ex.local is None:
        raise click.ClickException(
            f"service {ref.namespace}/{ref.name} does not exist in cell {cell!r}: node "
            f"{cell}/{node} programs nothing for it (the VIPs are the local cell's)"
        )
    if output == "json":
        click.echo(json.dumps(explanation_json(ex), indent=2))
        return
    click.echo(explanation_text(ex))
