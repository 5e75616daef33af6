"""``meshctl status [--wait]``: is the cell's meshapi up, which peers it has, what its agents see.

Flow: the selected context (or ``--kube-context``: the cell's meshapi Service, see
``meshctl.kube.access``) -> ``GetCell`` and ``List`` (heartbeat, Peer records, ``AgentStatus``
records) on the cell's meshapi -> ``status_document`` (pure: ages, per agent and per watched cell
its state and counts, and the ``problems`` that keep the cell from being ready) -> a table or
JSON. ``--wait`` polls until nothing is left in ``problems``: the meshapi answers, at least one
agent reports, and every reporting agent is ready and sees its own cell and every connected peer
``ready``; otherwise it fails (exit 1) after ``--wait-duration`` naming what is not ready.

``-o json`` is a stable document (``schema: cellmesh.status/v1``); fields are only ever added::

    {"schema", "context", "server", "time", "ready", "problems": [str], "hints": [str],
     "meshapi": {"reachable", "error", "cell", "cell_id", "revision", "heartbeat_age"},
     "peers": [{"name", "id", "address", "tls_server_name", "watch", "export"}],
     "agents": [{"node", "reporting", "report_age", "ready", "reason", "services", "backends",
                 "full_maps": {map: entries waiting for room},
                 "peers": [{"cell", "cell_id", "local", "connected", "state", "synced",
                            "revision", "counts": {"nodes", "endpoints", "services",
                            "identities"}, "error_class", "last_error", "heartbeat_age"}]}],
     "recovery": {"recovering", "withheld": [kind],
                  "lost": [{"key", "kind", "name", "restore", "grace_left"}]}}

``hints`` says what most often causes a problem shown: a peer that stays ``connecting`` is
most often a TCP timeout to its meshapi port (security group / firewall), with the port.
``recovery`` reports an etcd wipe of the cell: records only an operator wrote (services, peers)
that the wipe lost, each with the command that restores it; the agents keep them (last-known-good)
for ``grace_left`` more seconds. A lost record is a problem (not ready) until it is restored.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import click

from meshcore.client import MeshApiError, MeshClient
from meshcore.model import AGENT_STATUS_STALE_AFTER, AgentStatus, Heartbeat, Kind, Peer
from meshcore.tls import TlsConfigError
from meshctl.contexts import Context, ContextError, ContextSelection
from meshctl.kube.options import kube_cell, kube_options
from meshctl.mesh_commands import describe_mesh_error
from meshctl.output import format_table, output_option

__all__ = ["connecting_hint", "parse_duration", "status_command", "status_document"]

SCHEMA = "cellmesh.status/v1"
COUNTED_KINDS = (Kind.NODE, Kind.ENDPOINT, Kind.SERVICE, Kind.IDENTITY)
HEARTBEAT_STALE_AFTER = 30.0  # the agents' default heartbeat timeout
POLL_INTERVAL = 1.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``300ms``, ``30s``, ``2m``, ``1h30m``) or plain seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"{text!r} is not a duration (examples: 30s, 2m, 1m30s)") from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{text!r} is not a duration of zero or more seconds")
    return seconds


def _duration_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


# ---- the document -----------------------------------------------------------------------------


def _age(now: float, then: float) -> float:
    return round(max(now - then, 0.0), 3)


def _agent_json(status: AgentStatus, connected: set[str], now: float) -> dict[str, Any]:
    age = _age(now, status.updated_at)
    return {
        "node": status.node,
        "reporting": age <= AGENT_STATUS_STALE_AFTER,
        "report_age": age,
        "ready": status.ready,
        "reason": status.reason,
        "services": status.services,
        "backends": status.backends,
        "full_maps": dict(status.full_maps),
        "peers": [
            {
                "cell": r.cell,
                "cell_id": r.cell_id,
                "local": r.local,
                "connected": r.local or r.cell in connected,
                "state": r.state,
                "synced": r.synced,
                "revision": r.revision,
                "counts": {str(k): r.counts.get(str(k), 0) for k in COUNTED_KINDS},
                "error_class": r.error_class,
                "last_error": r.last_error,
                "heartbeat_age": r.heartbeat_age,
            }
            for r in status.peers
        ],
    }


def _error_of(report: dict[str, Any]) -> str:
    if not report["last_error"]:
        return ""
    return f" ({report['error_class'] or 'error'}: {report['last_error']})"


def connecting_hint(peer: str, address: str) -> str:
    """Why a peer stays ``connecting``, most often: the seed's TCP timeout to the meshapi port."""
    port = address.rpartition(":")[2]
    return (
        f"most often a TCP timeout to {peer}'s meshapi at {address}: allow TCP port {port} "
        f"from this cell's nodes to it (security group / firewall rules), and check that "
        f"{address} is the address of {peer}'s meshapi (load balancer)"
    )


def _hints(agents: list[dict[str, Any]], addresses: dict[str, str]) -> list[str]:
    """Troubleshooting for what the problems show: a peer some agent sees ``connecting``."""
    stuck = sorted(
        {
            p["cell"]
            for a in agents
            if a["reporting"]
            for p in a["peers"]
            if p["state"] == "connecting" and p["cell"] in addresses
        }
    )
    return [
        f"cell {name} is connecting: {connecting_hint(name, addresses[name])}" for name in stuck
    ]


def _agent_problems(agent: dict[str, Any], cell: str, connected: set[str]) -> list[str]:
    node = agent["node"]
    if not agent["reporting"]:
        return [f"agent {node}: not reporting (last report {agent['report_age']:.0f}s ago)"]
    problems = [] if agent["ready"] else [f"agent {node}: not ready ({agent['reason']})"]
    problems.extend(
        f"agent {node}: BPF map {name} full, {waiting} entries wait for room "
        "(raise the agent's --bpf-lb-map-max)"
        for name, waiting in sorted(agent.get("full_maps", {}).items())
    )
    reports = {p["cell"]: p for p in agent["peers"]}
    for name in [cell, *sorted(connected)]:
        report = reports.get(name)
        if report is None:
            problems.append(f"agent {node}: does not watch cell {name} yet")
        elif report["state"] != "ready":
            problems.append(f"agent {node}: cell {name} is {report['state']}{_error_of(report)}")
    return problems


def status_document(
    ctx: Context,
    *,
    cell: tuple[str, int, int] | None,
    records: list[Any],
    error: str | None,
    now: float,
    recovery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The status of a cell from what its meshapi answered (``cell``: name, id, revision;
    ``recovery``: its store-wipe recovery state)."""
    heartbeat = next((r for r in records if isinstance(r, Heartbeat)), None)
    peers = sorted((r for r in records if isinstance(r, Peer)), key=lambda p: p.name)
    connected = {p.name for p in peers if p.watch}  # a unicast grant is not watched
    agents = [
        _agent_json(r, connected, now)
        for r in sorted((r for r in records if isinstance(r, AgentStatus)), key=lambda a: a.node)
    ]
    heartbeat_age = _age(now, heartbeat.timestamp) if heartbeat is not None else None
    problems: list[str] = []
    if cell is None:
        problems.append(error or "meshapi not reachable")
    else:
        if heartbeat_age is None or heartbeat_age > HEARTBEAT_STALE_AFTER:
            shown = "none yet" if heartbeat_age is None else f"{heartbeat_age:.0f}s old"
            problems.append(f"meshapi of cell {cell[0]}: heartbeat {shown} (is its etcd up?)")
        if not agents:
            problems.append(f"no agent of cell {cell[0]} reports yet")
        for agent in agents:
            problems.extend(_agent_problems(agent, cell[0], connected))
    lost = _recovery_json(recovery or {})
    problems.extend(
        f"lost in an etcd wipe: {r['kind']} {r['name']} (restore: {r['restore']})"
        for r in lost["lost"]
    )
    return {
        "schema": SCHEMA,
        "context": ctx.name,
        "server": ctx.server,
        "time": now,
        "ready": not problems,
        "problems": problems,
        "hints": _hints(agents, {p.name: p.address for p in peers}),
        "meshapi": {
            "reachable": cell is not None,
            "error": error,
            "cell": cell[0] if cell else None,
            "cell_id": cell[1] if cell else None,
            "revision": cell[2] if cell else None,
            "heartbeat_age": heartbeat_age,
        },
        "peers": [
            {
                "name": p.name,
                "id": p.id,
                "address": p.address,
                "tls_server_name": p.tls_server_name,
                "watch": p.watch,
                "export": p.export,
            }
            for p in peers
        ],
        "agents": agents,
        "recovery": lost,
    }


def _recovery_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The lost-state part of the status from meshapi's recovery document."""
    withheld = doc.get("withheld") or {}
    return {
        "recovering": bool(doc.get("recovering")),
        "withheld": sorted(withheld),
        "lost": [
            {
                "key": r.get("key", ""),
                "kind": r.get("kind", ""),
                "name": r.get("name", ""),
                "restore": r.get("restore", ""),
                "grace_left": (withheld.get(r.get("kind")) or {}).get("grace_left"),
            }
            for r in doc.get("lost") or []
        ],
    }


async def fetch_status(ctx: Context) -> dict[str, Any]:
    """Ask the cell's meshapi; an unreachable one gives a document that says so."""
    try:
        async with MeshClient(ctx.server, ctx.tls_dir, server_name=ctx.server_name) as client:
            info = await client.get_cell()
            listed, _ = await client.list([Kind.HEARTBEAT, Kind.PEER, Kind.AGENT])
            recovery = await client.recovery()
    except MeshApiError as e:
        return status_document(
            ctx, cell=None, records=[], error=describe_mesh_error(e, ctx), now=time.time()
        )
    cell = (info.config.name, int(info.config.id), info.revision)
    records = [r for _, r in listed]
    return status_document(
        ctx, cell=cell, records=records, error=None, now=time.time(), recovery=recovery
    )


async def wait_status(ctx: Context, *, wait: float | None) -> dict[str, Any]:
    """The status now, or (``wait`` seconds) polled until ready or the time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (wait or 0.0)
    while True:
        doc = await fetch_status(ctx)
        if wait is None or doc["ready"] or loop.time() >= deadline:
            return doc
        await asyncio.sleep(min(POLL_INTERVAL, max(deadline - loop.time(), 0.0)))


# ---- output -----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _direction(peer: dict[str, Any]) -> str:
    """Unicast peers say which way they read (older documents have neither field: both)."""
    watch, export = peer.get("watch", True), peer.get("export", True)
    if watch and export:
        return ""
    return ", watched only" if watch else ", reads this cell only"


def format_status(doc: dict[str, Any]) -> str:
    api = doc["meshapi"]
    if api["reachable"]:
        head = (
            f"Cell:    {api['cell']} (id {api['cell_id']}) at {doc['server']}: reachable, "
            f"heartbeat {_seconds(api['heartbeat_age'])} ago"
        )
    else:
        head = f"Cell:    context {doc['context']} at {doc['server']}: NOT REACHABLE"
    peers = ", ".join(
        f"{p['name']} (id {p['id']}, {p['address']}{_direction(p)})" for p in doc["peers"]
    )
    agents = doc["agents"]
    reporting = sum(a["reporting"] for a in agents)
    lines = [
        head,
        f"Peers:   {peers or 'none'}",
        f"Agents:  {len(agents)}, {reporting} reporting, "
        f"{sum(a['reporting'] and a['ready'] for a in agents)} ready",
    ]
    lines.extend(_format_lost(doc.get("recovery") or {}))
    rows = [
        (
            a["node"],
            p["cell"] + (" (own)" if p["local"] else ""),
            p["state"] if a["reporting"] else f"{p['state']}?",
            "yes" if p["synced"] else "no",
            *(str(p["counts"][str(k)]) for k in COUNTED_KINDS),
            p["error_class"] or "-",
            _seconds(p["heartbeat_age"]),
            _seconds(a["report_age"]) + ("" if a["reporting"] else " (not reporting)"),
        )
        for a in agents
        for p in a["peers"]
    ]
    if rows:
        headers = ("NODE", "CELL", "STATE", "SYNCED", "NODES", "ENDPOINTS", "SERVICES",
                   "IDENTITIES", "LAST-ERROR", "HEARTBEAT", "REPORTED")  # fmt: skip
        lines += ["", format_table(headers, rows)]
    lines.append("")
    lines.append("Status:  ready" if doc["ready"] else "Status:  not ready")
    lines.extend(f"  - {problem}" for problem in doc["problems"])
    lines.extend(f"  hint: {hint}" for hint in doc.get("hints") or [])
    return "\n".join(lines)


def _format_lost(recovery: dict[str, Any]) -> list[str]:
    lost = recovery.get("lost") or []
    if not lost:
        return []
    lines = ["", f"Lost:    {len(lost)} record(s) lost in an etcd wipe; the agents keep them "
             "until restored or the grace period ends"]  # fmt: skip
    rows = [(r["kind"], r["name"], _seconds(r["grace_left"]), r["restore"]) for r in lost]
    lines.append(format_table(("KIND", "NAME", "KEPT-FOR", "RESTORE WITH"), rows))
    return lines


@click.command("status")
@click.option(
    "--context",
    "context_name",
    metavar="NAME",
    help="Context (cell) to report on [default: the global --context or current].",
)
@kube_options
@click.option("--wait", is_flag=True, help="Wait until the cell and all its agents are ready.")
@click.option(
    "--wait-duration",
    default="5m",
    callback=_duration_option,
    show_default=True,
    help="How long --wait waits (e.g. 30s, 2m, 1h).",
)
@output_option("Output format (json: see 'schema' in the document).")
@click.pass_obj
def status_command(
    selection: ContextSelection,
    context_name: str | None,
    kube_context: str | None,
    endpoint: str | None,
    kubeconfig: Path | None,
    wait: bool,
    wait_duration: float,
    output: str,
) -> None:
    """Show the cell's meshapi, its peers, and what each of its agents sees of every cell.

    The cell is a meshctl context (--context), or a kube context (--kube-context: its meshapi
    Service's LoadBalancer ingress, or --endpoint).
    """
    try:
        ctx = (
            kube_cell(
                selection.config_path,
                kube_context=kube_context,
                endpoint=endpoint,
                kubeconfig=kubeconfig,
                context_name=context_name,
            )
            or ContextSelection(
                selection.config_path, context_name or selection.context_name
            ).resolve()
        )
        doc = asyncio.run(wait_status(ctx, wait=wait_duration if wait else None))
    except ContextError as e:
        raise click.ClickException(str(e)) from e
    except TlsConfigError as e:
        raise click.ClickException(f"cannot load TLS files: {e}") from e
    click.echo(json.dumps(doc, indent=2) if output == "json" else format_status(doc))
    if wait and not doc["ready"]:
        raise click.ClickException(
            f"cell not ready after {wait_duration:g}s: "
            + "; ".join([*doc["problems"], *(f"hint: {h}" for h in doc["hints"])])
        )
    if not doc["meshapi"]["reachable"]:
        raise click.ClickException(doc["meshapi"]["error"] or "meshapi not reachable")
