"""`meshctl bpf services`: what a node's socket load balancer maps hold, read from their pins.

Flow: ``--pin-dir`` (the maps directory, or the instance directory above it) -> `PinnedLbMaps`
(read only: `contents()`, then closed) -> `MapContents` (bpf/lbstate.py) -> one view per
frontend (`service_views`) -> a table or a JSON document on stdout. The command shows the maps as
they are, also when they are inconsistent: a slot missing below the count, a slot naming a
backend id the backends map lacks, slots past the count (stale) and slots without a master entry.
A directory that does not exist or holds no pinned maps is a one-line error (exit 1).

``-o json`` prints one document, FROZEN (scripts read it)::

    {"maps_dir": "/sys/fs/bpf/cellmesh/<instance>/maps",
     "services": [                          # sorted by (vip, port, proto, scope)
       {"vip": "127.200.9.1", "port": 80, "proto": "tcp", "scope": "external",
        "master": true,                     # false: slots without a master entry
        "count": 3,                         # null when there is no master entry
        "rev_nat_id": 7, "flags": 0,        # 0 and 0 when there is no master entry
        "rev_nat": {"address": "127.200.9.1", "port": 80},   # or null: no such entry
        "slots": [                          # every slot in the map and each missing one
                                            # of 1..count, sorted by slot
          {"slot": 1, "state": "ok",        # ok | missing-slot | unknown-backend
                                            # | stale | no-master
           "backend_id": 12,                # null for a missing slot
           "backend": {"address": "10.0.0.1", "port": 8080, "proto": "tcp",
                       "cell_id": 1, "flags": 0}}]}]}   # null: slot missing / id unknown

Protocols and scopes are names ("tcp", "udp"; "external", "internal"), or the number as a
string when the maps hold a value this version does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click

from bpf.layout import Lb4Backend
from bpf.lbmaps import LbMapsError
from bpf.lbstate import PROTO_NAMES, SCOPE_NAMES, MapContents, MapService
from meshctl.output import format_table, output_option

__all__ = ["bpf_group", "resolve_maps_dir", "service_views", "services_json", "services_table"]

STATE_OK: Final = "ok"
STATE_MISSING_SLOT: Final = "missing-slot"
STATE_UNKNOWN_BACKEND: Final = "unknown-backend"
STATE_STALE: Final = "stale"
STATE_NO_MASTER: Final = "no-master"


@dataclass(frozen=True)
class SlotView:
    """One backend slot of a frontend as the maps hold it."""

    slot: int
    state: str
    backend_id: int | None
    backend: Lb4Backend | None


@dataclass(frozen=True)
class ServiceView:
    service: MapService
    slots: tuple[SlotView, ...]
    rev_nat: tuple[str, int] | None  # (address, port) of its reverse-NAT entry


def service_views(contents: MapContents) -> list[ServiceView]:
    """Per frontend: slots 1..count (missing ones included), then stale or master-less slots."""
    views = []
    for svc in contents.services:
        count = svc.count or 0
        slots = []
        for slot in sorted(set(range(1, count + 1)) | svc.slots.keys()):
            bid = svc.slots.get(slot)
            backend = contents.backends.get(bid) if bid is not None else None
            if svc.count is None:
                state = STATE_NO_MASTER
            elif slot > count:
                state = STATE_STALE
            elif bid is None:
                state = STATE_MISSING_SLOT
            elif backend is None:
                state = STATE_UNKNOWN_BACKEND
            else:
                state = STATE_OK
            slots.append(SlotView(slot, state, bid, backend))
        rn = contents.reverse_nat.get(svc.rev_nat_id) if svc.count is not None else None
        rev_nat = (str(rn.address), rn.port) if rn is not None else None
        views.append(ServiceView(svc, tuple(slots), rev_nat))
    return views


def _proto(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def _scope(scope: int) -> str:
    return SCOPE_NAMES.get(scope, str(scope))


def _backend_json(be: Lb4Backend | None) -> dict[str, Any] | None:
    if be is None:
        return None
    return {
        "address": str(be.address),
        "port": be.port,
        "proto": _proto(be.proto),
        "cell_id": be.cell_id,
        "flags": be.flags,
    }


def services_json(views: list[ServiceView], maps_dir: Path) -> dict[str, Any]:
    """The document ``-o json`` prints (shape in the module docstring)."""
    services = []
    for view in views:
        svc, fe = view.service, view.service.frontend
        services.append(
            {
                "vip": str(fe.address),
                "port": fe.port,
                "proto": _proto(fe.proto),
                "scope": _scope(fe.scope),
                "master": svc.count is not None,
                "count": svc.count,
                "rev_nat_id": svc.rev_nat_id,
                "flags": svc.flags,
                "rev_nat": (
                    {"address": view.rev_nat[0], "port": view.rev_nat[1]} if view.rev_nat else None
                ),
                "slots": [
                    {
                        "slot": s.slot,
                        "state": s.state,
                        "backend_id": s.backend_id,
                        "backend": _backend_json(s.backend),
                    }
                    for s in view.slots
                ],
            }
        )
    return {"maps_dir": str(maps_dir), "services": services}


_NOTES: Final = {
    STATE_OK: "",
    STATE_MISSING_SLOT: "slot missing",
    STATE_UNKNOWN_BACKEND: "unknown backend id",
    STATE_STALE: "stale (past count)",
    STATE_NO_MASTER: "no master entry",
}


def services_table(views: list[ServiceView]) -> str:
    """One row per slot; the frontend's columns only on its first row."""
    headers = (
        "FRONTEND", "SCOPE", "REV-NAT", "COUNT", "SLOT", "BACKEND-ID", "BACKEND", "CELL", "NOTE",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = []
    for view in views:
        svc, fe = view.service, view.service.frontend
        head = (
            f"{fe.address}:{fe.port}/{_proto(fe.proto)}",
            _scope(fe.scope),
            str(svc.rev_nat_id) if svc.count is not None else "-",
            str(svc.count) if svc.count is not None else "-",
        )
        if not view.slots:
            rows.append((*head, "-", "-", "-", "-", "no backends"))
            continue
        for i, s in enumerate(view.slots):
            be = s.backend
            rows.append(
                (
                    *(head if i == 0 else ("",) * len(head)),
                    str(s.slot),
                    str(s.backend_id) if s.backend_id is not None else "-",
                    f"{be.address}:{be.port}/{_proto(be.proto)}" if be else "-",
                    str(be.cell_id) if be else "-",
                    _NOTES[s.state],
                )
            )
    return format_table(headers, rows)


def resolve_maps_dir(pin_dir: Path) -> Path:
    """The maps directory itself, or ``<dir>/maps`` when given an instance directory."""
    if not pin_dir.is_dir():
        raise click.ClickException(f"{pin_dir}: no such directory (is the datapath loaded?)")
    maps = pin_dir / "maps"
    return maps if maps.is_dir() else pin_dir


def _read_contents(maps_dir: Path) -> MapContents:
    # Imported here, not at the top: it loads libbpf, which a machine that only talks to
    # meshapi need not have; every other meshctl command must work without it.
    try:
        from bpf.pinned_maps import PinnedLbMaps
    except OSError as e:
        raise click.ClickException(f"cannot use libbpf: {e}") from e
    try:
        with PinnedLbMaps(maps_dir) as maps:
            return maps.contents()
    except (LbMapsError, OSError, ValueError) as e:
        raise click.ClickException(f"cannot read the maps in {maps_dir}: {e}") from e


@click.group("bpf")
def bpf_group() -> None:
    """Look inside a node's datapath maps."""


@bpf_group.command("services")
@click.option(
    "--pin-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The pinned maps directory (<bpffs>/cellmesh/<instance>/maps) or its instance directory.",
)
@output_option()
def services_command(pin_dir: Path, output: str) -> None:
    """Show each frontend in the services map with its backend slots."""
    maps_dir = resolve_maps_dir(pin_dir)
    views = service_views(_read_contents(maps_dir))
    if output == "json":
        click.echo(json.dumps(services_json(views, maps_dir), indent=2))
        return
    if not views:
        click.echo(f"No services in {maps_dir}.", err=True)
        return
    click.echo(services_table(views))
