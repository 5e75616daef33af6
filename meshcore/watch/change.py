"""`Change`: one change of a watched cell's local copy (a put, or a delete when `record` is None).

What a `ListWatcher` (`meshcore.watch.listwatch`) hands its consumer, and what the node agent's
pure core (`nodeagent.cellcache`, `nodeagent.meshview`, `nodeagent.core`) consumes. Pure: a value
type, no IO, so the consumers need not import the watcher's asyncio and gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.model import Kind, Record

__all__ = ["Change"]


@dataclass(frozen=True, slots=True)
class Change:
    """A change of the local copy: `record` is None for a delete."""

    key: str
    kind: Kind
    record: Record | None
    revision: int
