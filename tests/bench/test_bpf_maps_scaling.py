"""`LbMaps.apply` scales linearly (issue 11, defect 13): the bench's quick mode, run in `make test`.

`bench/bpf_maps.py --quick` applies 1 000 and 10 000 services of 10 backends in one run, to real
pinned maps and to maps that do nothing, and fails when 10x the services costs more than 30x the
time. A ratio, not a timed threshold: it holds on a slow or busy machine. The quadratic walk over
the diff's backends (one per service) gave about 100x.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_apply_time_grows_linearly_with_services(sock_lb_object: Path) -> None:
    del sock_lb_object  # the bench loads bpf/sock_lb.o; the fixture checks the source compiles
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bpf_maps.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    scaling = figures["scaling"]
    assert scaling["sizes"] == [1000, 10000]
    for mode in ("python", "batch"):
        assert scaling[mode]["ratio"] <= 30.0, scaling
