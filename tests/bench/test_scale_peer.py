"""A peer too big for the agent's maps, end to end (issue 11, acceptance 4, reduced scale).

`bench/scale_peer.py` with 20 000 endpoints in 2 000 global services of 10 (22 000 service
entries, 20 000 backends) and maps of 21 000: real etcds and meshapis, the agent on real pinned
maps. The services map fills: the agent reports it once, keeps every entry it wrote, makes no
write attempt while nothing changes, and the peer never goes stale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_peer_too_big_for_the_maps_fills_them_once_and_keeps_every_entry(
    sock_lb_object: Path,
) -> None:
    del sock_lb_object  # the bench loads bpf/sock_lb.o; the fixture checks the source compiles
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale_peer.py"), "--endpoints", "20000",
         "--lb-map-max", "21000", "--observe", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    full = figures["full_maps"]
    assert list(full) == ["cm_lb4_services"], figures
    assert full["cm_lb4_services"]["capacity"] == 21000
    assert full["cm_lb4_services"]["parked"] > 0
    entries = figures["entries"]["cm_lb4_services"]
    assert 21000 - 11 < entries <= 21000  # filled up to less than one service of room
    assert figures["unreachable_service_entries"] == 0  # no slots of refused writes left over
    # The services refused are exactly those parked (one of 10 refused a larger set keeps its
    # old entry: in the maps, not complete, and parked).
    assert figures["services_complete"] + full["cm_lb4_services"]["parked"] == 2000
    assert figures["entries_kept"] is True
    assert figures["observe_write_attempts"] == 0
    assert figures["observe_refused"] == 0
    assert figures["peer_ever_stale"] is False
    logged = [line for line in proc.stderr.splitlines() if "LB map full" in line]
    assert len(logged) == 1, proc.stderr[-4000:]
