"""``meshctl lab stop|start|restart``: one component of a real lab, stopped and started by hand.

One lab for the module (1 cell, 2 nodes, no pods: every component kind, and a cell with more
than one agent). Each test leaves the lab healthy again; the module's last test leaves some
components stopped or restarted and takes the lab down, proving that nothing is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import Lab, cleaned_up, new_lab, wait_for


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    made = new_lab(tmp_path_factory.mktemp("components"))
    with cleaned_up([made]):
        up = made.lab("up", "--cells", "1", "--nodes", "2", "--pods-per-node", "0", "--wait")
        assert up.returncode == 0, up.stderr
        yield made


def component(doc: dict[str, Any], kind: str, node: str | None = None) -> dict[str, Any]:
    cell = doc["cells"][0]
    if kind == "agent":
        found: dict[str, Any] = next(n for n in cell["nodes"] if n["name"] == node)["agent"]
        return found
    block: dict[str, Any] = cell[kind]
    return block


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def healthy(lab: Lab) -> bool:
    return bool(lab.status()["healthy"])


def processes(lab: Lab) -> list[tuple[str, int | None]]:
    """(state, pid) of etcd, meshapi and every agent."""
    doc = lab.status()
    blocks = [component(doc, "etcd"), component(doc, "meshapi")]
    blocks += [node["agent"] for node in doc["cells"][0]["nodes"]]
    return [(block["state"], block["pid"]) for block in blocks]


@pytest.mark.parametrize(
    ("target", "kind", "node"),
    [
        pytest.param("alpha", "etcd", None, id="etcd"),
        pytest.param("alpha", "meshapi", None, id="meshapi"),
        pytest.param("alpha/node1", "agent", "node1", id="agent"),
    ],
)
def test_stop_then_start_each_component_kind(
    lab: Lab, target: str, kind: str, node: str | None
) -> None:
    before = component(lab.status(), kind, node)
    assert before["state"] == "running"

    out = ok(lab.lab("stop", target, "--component", kind))
    label = f"agent {target}" if kind == "agent" else f"{kind} of alpha"
    assert out == f"{label} stopped (pid {before['pid']}, SIGTERM)\n"
    doc = lab.status()
    stopped = component(doc, kind, node)
    assert (stopped["state"], stopped["pid"], stopped["alive"]) == ("stopped", None, False)
    assert not doc["healthy"]
    again = ok(lab.lab("stop", target, "--component", kind))  # idempotent
    assert again == f"{label} was not running\n"

    out = ok(lab.lab("start", target, "--component", kind))
    started = component(lab.status(), kind, node)
    assert out == f"{label} started (pid {started['pid']})\n"
    assert (started["state"], started["alive"]) == ("running", True)
    assert started["pid"] != before["pid"]
    # Same command line, same ports: it serves where it did before.
    for key in ("endpoint", "address", "http"):
        assert started.get(key) == before.get(key)
    wait_for("the lab to be healthy again", lambda: healthy(lab))
    assert ok(lab.lab("start", target, "--component", kind)) == (
        f"{label} already running (pid {started['pid']})\n"
    )


def test_a_crash_shows_as_exited_and_kill_rehearses_one(lab: Lab) -> None:
    meshapi = component(lab.status(), "meshapi")
    os.kill(meshapi["pid"], signal.SIGKILL)  # the lab's meshapi, by the pid it recorded
    wait_for("the meshapi to be gone", lambda: component(lab.status(), "meshapi")["alive"] is False)
    crashed = component(lab.status(), "meshapi")
    assert (crashed["state"], crashed["pid"]) == ("exited", meshapi["pid"])
    ok(lab.lab("start", "alpha", "--component", "meshapi"))
    assert component(lab.status(), "meshapi")["state"] == "running"

    agent = component(lab.status(), "agent", "node0")
    out = ok(lab.lab("stop", "alpha/node0", "--component", "agent", "--signal", "KILL"))
    assert out == f"agent alpha/node0 stopped (pid {agent['pid']}, SIGKILL)\n"
    assert component(lab.status(), "agent", "node0")["state"] == "stopped"
    ok(lab.lab("start", "alpha/node0", "--component", "agent"))
    wait_for("the lab to be healthy again", lambda: healthy(lab))


def test_restart_of_a_cell_restarts_every_agent(lab: Lab) -> None:
    before = {n: component(lab.status(), "agent", n)["pid"] for n in ("node0", "node1")}
    out = ok(lab.lab("restart", "alpha", "--component", "agent"))
    after = {n: component(lab.status(), "agent", n)["pid"] for n in ("node0", "node1")}
    assert out.splitlines() == [
        f"agent alpha/node0 stopped (pid {before['node0']}, SIGTERM)",
        f"agent alpha/node1 stopped (pid {before['node1']}, SIGTERM)",
        f"agent alpha/node0 started (pid {after['node0']})",
        f"agent alpha/node1 started (pid {after['node1']})",
    ]
    assert all(after[n] != before[n] for n in before)
    wait_for("the lab to be healthy again", lambda: healthy(lab))


def etcdctl(endpoint: str, *args: str) -> str:
    done = subprocess.run(
        ["etcdctl", "--endpoints", f"http://{endpoint}", "--dial-timeout", "2s", *args],
        capture_output=True, text=True, timeout=20, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_etcd_wipe_empties_its_data_directory(lab: Lab) -> None:
    endpoint = component(lab.status(), "etcd")["endpoint"]
    data_dir = Path(lab.status()["state_dir"]) / "etcd" / "alpha"
    marker = f"/test-marker/{lab.name}"
    etcdctl(endpoint, "put", marker, "before the wipe")

    out = ok(lab.lab("stop", "alpha", "--component", "etcd", "--signal", "KILL", "--wipe"))
    assert out.splitlines()[-1] == f"etcd of alpha: data directory {data_dir} emptied"
    assert data_dir.is_dir()
    assert list(data_dir.iterdir()) == []
    ok(lab.lab("start", "alpha", "--component", "etcd", "--wipe"))  # stopped: wiping is fine
    assert etcdctl(endpoint, "get", marker) == ""  # a new, empty store
    assert component(lab.status(), "etcd")["healthy"]

    etcdctl(endpoint, "put", marker, "before the second wipe")
    running = lab.lab("start", "alpha", "--component", "etcd", "--wipe")
    assert running.returncode == 1
    assert "etcd of alpha is running" in running.stderr
    assert etcdctl(endpoint, "get", marker, "--print-value-only") == "before the second wipe\n"
    ok(lab.lab("restart", "alpha", "--component", "etcd", "--wipe"))
    assert etcdctl(endpoint, "get", marker) == ""
    assert component(lab.status(), "etcd")["state"] == "running"
    # What meshapi writes again after a wipe is meshapi's business; etcd itself serves again.
    wait_for("etcd to be healthy", lambda: component(lab.status(), "etcd")["healthy"])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["stop", "gamma", "--component", "etcd"], 1,
                     "lab '{lab}' has no cell 'gamma' (cells: alpha)", id="unknown-cell"),
        pytest.param(["start", "alpha/node9", "--component", "agent"], 1,
                     "cell 'alpha' has no node 'node9' (nodes: node0, node1)", id="unknown-node"),
        pytest.param(["restart", "alpha/node0", "--component", "meshapi"], 1,
                     "'alpha/node0' names a node, but meshapi runs once per cell",
                     id="node-meshapi"),
        pytest.param(["stop", "alpha/node0/x", "--component", "agent"], 1,
                     "'alpha/node0/x' is not CELL or CELL/NODE", id="malformed"),
        pytest.param(["stop", "alpha", "--component", "meshapi", "--wipe"], 2,
                     "--wipe empties etcd's data directory; it does not apply to --component "
                     "meshapi", id="wipe-meshapi"),
        pytest.param(["restart", "alpha", "--component", "agent", "--wipe"], 2,
                     "it does not apply to --component agent", id="wipe-agent"),
        pytest.param(["stop", "alpha", "--component", "pod"], 2,
                     "'pod' is not one of 'etcd', 'meshapi', 'agent'", id="unknown-component"),
        pytest.param(["stop", "alpha"], 2, "Missing option '--component'", id="no-component"),
        pytest.param(["stop", "alpha", "--component", "etcd", "--signal", "HUP"], 2,
                     "Invalid value for '--signal': 'HUP' is not one of", id="bad-signal"),
    ],
)  # fmt: skip
def test_bad_targets_name_the_bad_value(lab: Lab, args: list[str], code: int, message: str) -> None:
    before = processes(lab)
    done = lab.lab(*args)
    assert done.returncode == code, done.stdout + done.stderr
    assert message.format(lab=lab.name) in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert processes(lab) == before  # nothing was touched


def test_an_unknown_lab_is_named(tmp_path: Path) -> None:
    missing = new_lab(tmp_path)
    done = missing.lab("stop", "alpha", "--component", "etcd")
    assert done.returncode == 1
    assert f"no lab named {missing.name!r}" in done.stderr


def test_down_removes_stopped_and_restarted_components(lab: Lab) -> None:
    ok(lab.lab("stop", "alpha", "--component", "meshapi", "--signal", "KILL"))
    ok(lab.lab("restart", "alpha/node1", "--component", "agent"))
    ok(lab.lab("restart", "alpha", "--component", "etcd"))
    lab.down_and_check()  # every pid the lab ever recorded is gone, and everything else
