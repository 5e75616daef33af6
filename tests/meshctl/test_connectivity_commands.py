"""``connectivity test``: what it refuses before it touches a mesh, invoked through click.

Its output formats and exit codes on a real lab are tested in tests/lab/test_connectivity.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import meshctl.connectivity_commands


def run(*args: str) -> Result:
    return CliRunner().invoke(meshctl.connectivity_commands.connectivity_group, ["test", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "pass --multi-cluster (single-cluster mode is not implemented)", id="mc"),
        pytest.param(
            ["--multi-cluster", "--driver", "lab", "--kube-context", "cell-1"],
            "--kube-context needs the Kubernetes driver, not --driver lab",
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
        meshctl.connectivity_commands.connectivity_group,
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
