"""``meshctl status`` of a cell that only grants a unicast peer (issue 11, #8; pure).

The destination of a unicast connection holds a Peer record for the source with ``watch`` off:
its agents never watch the source, so status must not wait for them to, and it says which way
the peer reads.
"""

from __future__ import annotations

import time
from pathlib import Path

from meshcore.model import AgentStatus, Heartbeat, Peer
from meshcore.model.agentstatus import PeerReport
from meshctl.contexts import Context
from meshctl.status_commands import format_status, status_document


def test_a_granted_peer_is_shown_and_not_waited_for() -> None:
    now = time.time()
    records = [
        Heartbeat(cell="beta", timestamp=now, sequence=1),
        Peer(cell="beta", name="alpha", id=1, address="127.0.0.1:7443", watch=False),
        Peer(cell="beta", name="gamma", id=3, address="127.0.0.1:7445"),
        AgentStatus(
            cell="beta",
            node="b1",
            updated_at=now,
            ready=True,
            peers=[
                PeerReport(cell="beta", local=True, state="ready", synced=True),
                PeerReport(cell="gamma", state="ready", synced=True),
            ],
        ),
    ]
    ctx = Context("beta", "127.0.0.1:7444", Path("/nonexistent"))
    doc = status_document(ctx, cell=("beta", 2, 9), records=records, error=None, now=now)
    assert (doc["ready"], doc["problems"]) == (True, [])
    assert [(p["name"], p["watch"], p["export"]) for p in doc["peers"]] == [
        ("alpha", False, True),
        ("gamma", True, True),
    ]
    text = format_status(doc)
    assert "alpha (id 1, 127.0.0.1:7443, reads this cell only)" in text
    assert "gamma (id 3, 127.0.0.1:7445)" in text
