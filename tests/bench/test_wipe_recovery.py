"""A wipe-recovery step does not rescan the remembered records (review of issue 11).

`bench/wipe_recovery.py` at a reduced scale, in `make test`: meshapi steps its recovery every
0.1 s, so one step must cost a small fraction of one pass over what it remembers. A ratio against
that pass, not a timed threshold. The first version rescanned (and sorted) every record per
step: about 9.5 passes per step; with the per-kind indexes built at reset, about 0.01.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_recovery_step_costs_a_fraction_of_one_pass_over_the_memory() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "wipe_recovery.py"), "--services", "5000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["records"] == 5000 * 11 + 2
    assert figures["lost"] == 5000  # the services only an operator wrote
    assert figures["step_vs_scan"] < 0.5, figures
