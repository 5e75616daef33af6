"""Standalone registration: the agent publishes its node and its local workloads' endpoints.

The desired records come from the flags (node addresses, pod CIDRs) and a workloads file (YAML or
JSON, re-read when it changes):

    endpoints:
      - {namespace: demo, service: echo, address: 10.1.1.5,
         ports: [{name: http, port: 8080, protocol: TCP}], ready: true}

They are compared with what the own cell's cache holds for this node, and only the difference is
written through the own meshapi (an agent may write only its own node's records). Missing records
are written again on the next pass — also after the cell's etcd was wiped, when the cache still
shows them (last-known-good: their deletes are held until the cell's canaries return) but the
store no longer has them: a record that stays only by a held delete counts as missing. meshapi
withholds the node and endpoint canaries until every node registered again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import yaml
from pydantic import ValidationError

from meshcore.model import Endpoint, Node, Record, format_validation_error
from nodeagent.cellcache import CellCache

log = structlog.get_logger("nodeagent.registration")


class Writer(Protocol):
    async def write(
        self, *, puts: Sequence[Record] = (), deletes: Sequence[str] = (), timeout: float = 10.0
    ) -> int: ...


class WorkloadsError(ValueError):
    """The workloads file is unreadable or invalid; the message names the file and entry."""


@dataclass
class RegistrationStats:
    writes: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class Registrar:
    cell: str
    node: str
    addresses: list[str]
    pod_cidrs: list[str]
    workloads: Path | None = None
    stats: RegistrationStats = field(default_factory=RegistrationStats)
    _mtime: float | None = None
    _endpoints: dict[str, Endpoint] = field(default_factory=dict)

    def node_record(self) -> Node:
        return Node(
            cell=self.cell, name=self.node, addresses=self.addresses, pod_cidrs=self.pod_cidrs
        )

    def load_workloads(self) -> dict[str, Endpoint]:
        """The endpoints of the workloads file (cached until the file changes)."""
        if self.workloads is None:
            return {}
        try:
            mtime = self.workloads.stat().st_mtime
        except FileNotFoundError:
            return {}
        if mtime == self._mtime:
            return self._endpoints
        self._mtime = mtime  # a bad file is reported once, until it changes again
        text = self.workloads.read_text()
        self._endpoints = parse_workloads(
            text, cell=self.cell, node=self.node, where=self.workloads
        )
        return self._endpoints

    async def reconcile(self, client: Writer, own: CellCache, *, synced: bool) -> int:
        """Write what the own cache lacks or holds differently; delete what is no longer ours
        (deletes only once the own cell is synced: before that, a missing record proves nothing)."""
        try:
            endpoints = self.load_workloads()
        except WorkloadsError as e:
            self.stats.errors += 1
            self.stats.last_error = str(e)
            log.warning("Workloads file refused, keeping the last good one", error=str(e))
            endpoints = self._endpoints
        puts: list[Record] = []
        node = self.node_record()
        if own.nodes.get(self.node) != node or own.is_held(node.key()):
            puts.append(node)
        have = {
            e.key(): e
            for by_address in own.endpoints.values()
            for e in by_address.values()
            if e.node == self.node and not own.is_held(e.key())
        }
        now = time.time()
        for key, want in endpoints.items():
            current = have.get(key)
            if current is None or current.model_copy(update={"updated_at": 0.0}) != want:
                puts.append(want.model_copy(update={"updated_at": now}))
        deletes = sorted(have.keys() - endpoints.keys()) if synced else []
        if not puts and not deletes:
            return 0
        await client.write(puts=puts, deletes=deletes)
        self.stats.writes += 1
        return len(puts) + len(deletes)


def parse_workloads(text: str, *, cell: str, node: str, where: Path | str) -> dict[str, Endpoint]:
    try:
        doc: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise WorkloadsError(f"{where}: not YAML/JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("endpoints", []), list):
        raise WorkloadsError(f"{where}: expected a mapping with a list 'endpoints'")
    out: dict[str, Endpoint] = {}
    for i, item in enumerate(doc.get("endpoints", [])):
        if not isinstance(item, dict):
            raise WorkloadsError(f"{where}: endpoints[{i}] is not a mapping")
        try:
            ep = Endpoint.model_validate({**item, "cell": cell, "node": node, "updated_at": 0.0})
        except ValidationError as e:
            raise WorkloadsError(f"{where}: endpoints[{i}]: {format_validation_error(e)}") from e
        out[ep.key()] = ep
    return out
