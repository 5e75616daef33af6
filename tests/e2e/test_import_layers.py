"""Who imports whom, checked in a fresh interpreter: the CLI never loads the node agent, and the
connectivity suite never loads the CLI (the CLI hands the suite its driver)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def loaded_after(module: str) -> set[str]:
    """The top-level packages loaded by importing ``module`` in a new Python process."""
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


def test_the_cli_does_not_load_the_node_agent() -> None:
    loaded = loaded_after("meshctl.cli")
    assert "meshcore" in loaded
    assert "nodeagent" not in loaded


@pytest.mark.parametrize(
    "module",
    [
        "e2e.suite",
        "e2e.environment",
        "e2e.report",
        "e2e.driver",
        "e2e.checks",
        "e2e.cases",
        "e2e.disruptive",
        "e2e.probe",
    ],
)
def test_the_suite_does_not_load_the_cli(module: str) -> None:
    loaded = loaded_after(module)
    assert "e2e" in loaded
    assert "meshctl" not in loaded
