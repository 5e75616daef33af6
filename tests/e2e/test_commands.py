"""``connectivity test``: options, output formats and exit codes, invoked through click.

The lab driver is replaced by the simulated mesh (``tests.e2e.simulated``) and, for the exit
codes, the suite's tests by stand-ins; everything else is the real command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import e2e.commands
import e2e.suite
from e2e.checks import TestContext
from e2e.probe import CheckFailed
from e2e.suite import TestCase
from tests.e2e.simulated import SimulatedAdmin, SimulatedMesh


def run(*args: str) -> Result:
    return CliRunner().invoke(e2e.commands.connectivity_group, ["test", *args])


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> SimulatedMesh:
    mesh = SimulatedMesh(topology={"alpha": ["a1", "a2"], "beta": ["b1"], "gamma": ["c1"]})
    monkeypatch.setattr(e2e.commands, "make_lab_driver", lambda name, path: mesh)
    monkeypatch.setattr(e2e.suite, "MeshAdmin", lambda driver: SimulatedAdmin(mesh))
    return mesh


def ok(t: TestContext) -> str:
    return "all good"


def bad(t: TestContext) -> str:
    raise CheckFailed("expected a; saw b; likely cause: c")


STAND_INS = (
    TestCase("stand-in/ok", ok),
    TestCase("stand-in/bad", bad),
    TestCase("stand-in/disruptive", ok, disruptive=True),
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "pass --multi-cluster (single-cluster mode is not implemented)", id="mc"),
        pytest.param(
            ["--multi-cluster", "--driver", "kubernetes"],
            "the Kubernetes driver (a kube context per cell) is future work",
            id="kubernetes",
        ),
        pytest.param(["--multi-cluster", "--test", "nope"], "no test matches 'nope'", id="pattern"),
        pytest.param(["--multi-cluster", "-o", "yaml"], "'yaml' is not one of", id="output"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_a_lab_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        e2e.commands.connectivity_group,
        ["test", "--multi-cluster", "--lab", "nosuchlab", "--test", "affinity"],
        obj=None,
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: lab 'nosuchlab': ")
    assert "Traceback" not in result.output


def test_list() -> None:
    result = run("--list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "pod-to-pod/cross-cell/tcp"
    assert "disruptive/agent-restart  (disruptive)" in lines


def test_table_and_exit_code_1_on_a_failure(
    simulated: SimulatedMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(e2e.suite, "TESTS", STAND_INS)
    result = run("--multi-cluster")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Connectivity test: clients in cell 'alpha', destination cell 'beta'"
    assert lines[2].split() == ["TEST", "RESULT", "DURATION", "DETAIL"]
    assert lines[3].split()[:2] == ["stand-in/ok", "passed"]
    assert lines[4].split()[:2] == ["stand-in/bad", "failed"]
    assert lines[4].endswith("expected a; saw b; likely cause: c")
    assert lines[5].split()[:3] == ["stand-in/disruptive", "skipped", "-"]
    assert lines[-1] == "1 passed, 1 failed, 1 skipped"
    assert "running stand-in/ok ..." in result.stderr


def test_json_and_exit_code_0(simulated: SimulatedMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e.suite, "TESTS", STAND_INS)
    result = run(
        "--multi-cluster", "--context", "lab-gamma", "--destination-context", "alpha",
        "--test", "*/ok", "--test", "disruptive", "--include-disruptive", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["source"], doc["destination"]) == ("gamma", "alpha")
    assert [(r["name"], r["result"]) for r in doc["results"]] == [
        ("stand-in/ok", "passed"),
        ("stand-in/disruptive", "passed"),
    ]
    assert doc["summary"] == {"passed": 2, "failed": 0, "skipped": 0}
    assert result.stderr == ""


def test_real_tests_on_the_simulated_mesh(simulated: SimulatedMesh) -> None:
    result = run("--multi-cluster", "--test", "affinity/*", "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"] == {"passed": 3, "failed": 0, "skipped": 0}
    assert simulated.pods == {}


def test_unknown_cell_is_a_usage_error(simulated: SimulatedMesh) -> None:
    result = run("--multi-cluster", "--context", "delta")
    assert result.exit_code == 2
    assert "--context 'delta' is neither a cell nor a cell's context" in result.stderr
