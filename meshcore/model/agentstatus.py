"""``AgentStatus``: what a node agent last reported about itself and about every cell it watches.

FROZEN WIRE CONTRACT, like ``records``: add optional fields only. Flow: the agent builds the record
from its watchers (``nodeagent.report``) -> writes it through its own meshapi every
``AGENT_STATUS_INTERVAL`` seconds and after a peer state change (an agent may write only its own
node's status) -> the cell's full view (never exported to peers) -> ``meshctl status``. A record
older than ``AGENT_STATUS_STALE_AFTER`` seconds means the agent is not reporting.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshcore.model.keys import agent_key
from meshcore.model.names import CellIdField, CellName, DnsSubdomain, Timestamp

__all__ = [
    "AGENT_STATUS_INTERVAL",
    "AGENT_STATUS_STALE_AFTER",
    "MAX_ERROR_LENGTH",
    "AgentStatus",
    "ErrorClassName",
    "PeerReport",
    "PeerStateName",
]

AGENT_STATUS_INTERVAL: Final = 5.0
"""Seconds between two reports of an agent (sooner after a peer state change)."""
AGENT_STATUS_STALE_AFTER: Final = 3 * AGENT_STATUS_INTERVAL
"""A report older than this: the agent is not reporting (stopped, or cut off from its meshapi)."""
MAX_ERROR_LENGTH: Final = 512
"""Longest ``last_error`` / ``reason`` accepted; the publisher cuts longer messages."""
MAX_REPORTED_CELLS: Final = 256

PeerStateName = Literal["connecting", "syncing", "ready", "stale", "revoked", "disconnected"]
ErrorClassName = Literal["", "dns", "tcp", "tls", "authz", "config", "protocol", "server", "resume"]

Count = Annotated[int, Field(ge=0)]
KindName = Annotated[str, Field(pattern=r"^[a-z]{1,32}$")]
"""A record kind's key segment (``nodes``, ``endpoints``...); free text, so newer kinds pass."""
Message = Annotated[str, Field(max_length=MAX_ERROR_LENGTH)]
MapName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")]


class PeerReport(BaseModel):
    """One watched cell as one agent sees it (the agent's own cell has ``local`` set)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    cell: CellName
    cell_id: CellIdField | None = None
    local: bool = False
    state: PeerStateName
    synced: bool
    revision: Count = 0
    counts: dict[KindName, Count] = Field(default_factory=dict, max_length=64)
    last_error: Message = ""
    error_class: ErrorClassName = ""
    heartbeat_age: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class AgentStatus(BaseModel):
    """A node agent's report: readiness, and a ``PeerReport`` per watched cell (own included)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    cell: CellName
    node: DnsSubdomain
    updated_at: Timestamp
    ready: bool
    reason: Message = ""
    peers: list[PeerReport] = Field(default_factory=list, max_length=MAX_REPORTED_CELLS)
    services: Count = 0
    backends: Count = 0
    full_maps: dict[MapName, Count] = Field(default_factory=dict, max_length=16)
    """BPF maps that refused entries for lack of room -> entries still waiting (map full)."""

    @model_validator(mode="after")
    def _check(self) -> AgentStatus:
        seen: set[str] = set()
        for report in self.peers:
            if report.cell in seen:
                raise ValueError(f"cell {report.cell!r} is reported twice")
            seen.add(report.cell)
            if report.local != (report.cell == self.cell):
                raise ValueError(
                    f"peers: cell {report.cell!r} has local={report.local}, but the agent's "
                    f"own cell is {self.cell!r}"
                )
        return self

    def key(self) -> str:
        return agent_key(self.cell, self.node)

    def report_of(self, cell: str) -> PeerReport | None:
        """The report of ``cell``, or None when the agent does not watch it."""
        return next((r for r in self.peers if r.cell == cell), None)
