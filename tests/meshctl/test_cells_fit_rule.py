"""`meshctl connect`'s preflight and the agent refuse exactly the same pairs of cells.

Both apply `meshcore.model.find_cell_clash`; only the wording differs (the preflight names the
meshapi flag to change). Before the one rule, the agent let overlapping node CIDRs through.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.model import CellConfig, RecordError, check_cells_distinct
from meshctl.connect_commands import PreflightError, check_cells_fit
from meshctl.contexts import Context
from meshctl.peering import Cell

ALPHA = CellConfig(name="alpha", id=1, pod_cidrs=["10.1.0.0/16"], node_cidrs=["192.168.1.0/24"])

OTHERS: dict[str, dict[str, object]] = {
    "fits": {},
    "same-name": {"name": "alpha", "id": 5},
    "same-id": {"id": 1},
    "pod-pod": {"pod_cidrs": ["10.1.128.0/17"]},
    "node-node": {"node_cidrs": ["192.168.1.0/25"]},
    "pod-node": {"node_cidrs": ["10.1.7.0/24"]},
    "node-pod": {"pod_cidrs": ["192.168.0.0/16"]},
    "v6-beside-v4": {"pod_cidrs": ["fd00:1::/48"]},
}


def cell(config: CellConfig) -> Cell:
    ctx = Context(config.name, f"127.0.0.1:{9000 + config.id}", Path("/nonexistent"))
    return Cell(ctx, config)


def agent_refuses(a: CellConfig, b: CellConfig) -> bool:
    try:
        check_cells_distinct(a, b)
    except RecordError:
        return True
    return False


def preflight_refuses(a: CellConfig, b: CellConfig) -> bool:
    try:
        check_cells_fit(cell(a), cell(b))
    except PreflightError:
        return True
    return False


@pytest.mark.parametrize("case", list(OTHERS))
def test_preflight_and_agent_apply_one_rule(case: str) -> None:
    body: dict[str, object] = {
        "name": "beta",
        "id": 2,
        "pod_cidrs": ["10.2.0.0/16"],
        "node_cidrs": ["192.168.2.0/24"],
    }
    beta = CellConfig.model_validate(body | OTHERS[case])
    refused = case not in ("fits", "v6-beside-v4")
    for a, b in ((ALPHA, beta), (beta, ALPHA)):
        assert preflight_refuses(a, b) is refused
        assert agent_refuses(a, b) is refused
