"""``lab up``/``down`` when things go wrong: crashes, lost state, a failing step, bad flags.

Each test makes its own small lab (``lab_factory``), whose finalizer takes it down again and
proves that nothing of it is left, the host's root network namespace unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab.conftest import MESHCTL, Lab, leftovers, recorded_processes

LabFactory = Callable[[], Lab]


def _kill9(pids: list[tuple[int, int]]) -> None:
    for pid, _ in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the lab's own processes, by the pids it recorded


def test_down_after_kill_9_and_a_lost_state_file(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    done = lab.lab("up", "--cells", "1", "--nodes", "1", "--pods-per-node", "1")
    assert done.returncode == 0, done.stderr
    pids = recorded_processes(lab.name)
    assert len(pids) == 4  # etcd, meshapi, agent, pod
    _kill9(pids)
    Path(f"/run/cellmesh/lab/{lab.name}/state.json").unlink()
    assert leftovers(lab.name, lab.config, [])  # namespaces, cgroup, pin, contexts remain

    down = lab.lab("down")
    assert down.returncode == 0, down.stderr
    assert leftovers(lab.name, lab.config, pids) == []


def test_down_after_an_interrupted_up(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    env = {**os.environ, "MESHCTL_CONFIG": str(lab.config)}
    up = subprocess.Popen(
        [MESHCTL, "lab", "up", "--name", lab.name, "--cells", "2", "--nodes", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        # Interrupt once the agents run: daemons, namespaces, cgroups and pins all exist.
        while len(recorded_processes(lab.name)) < 6 and up.poll() is None:
            assert time.monotonic() < deadline, "up never started its agents"
            time.sleep(0.02)
    finally:
        lab.remember()
        up.kill()  # our own child, by its pid
        up.communicate(timeout=10)
    # Without the state file, down finds the daemons by their arguments, the rest by name.
    Path(f"/run/cellmesh/lab/{lab.name}/state.json").unlink(missing_ok=True)
    down = lab.lab("down")
    assert down.returncode == 0, down.stderr
    assert leftovers(lab.name, lab.config, lab.seen) == []


def test_sigterm_during_up_undoes_the_lab(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    env = {**os.environ, "MESHCTL_CONFIG": str(lab.config)}
    up = subprocess.Popen(
        [MESHCTL, "lab", "up", "--name", lab.name, "--cells", "1", "--nodes", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while len(recorded_processes(lab.name)) < 2 and up.poll() is None:
            assert time.monotonic() < deadline, "up never started its control plane"
            time.sleep(0.02)
        lab.remember()
        up.terminate()  # our own child, by its pid
        _, stderr = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate(timeout=10)
    assert up.returncode == 1, stderr
    assert "lab up failed at interrupted: signal SIGTERM" in stderr
    assert "Traceback" not in stderr
    assert leftovers(lab.name, lab.config, lab.seen) == []


def test_a_failing_step_is_reported_and_undone(lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lab_factory()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "etcd").write_text("#!/bin/sh\necho 'etcd: cannot start' >&2\nexit 3\n")
    (fake / "etcd").chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    done = lab.lab("up", "--cells", "1", "--nodes", "2", path=path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: lab up failed at etcd (1): etcd of alpha exited"), done.stderr
    assert "Traceback" not in done.stderr
    assert leftovers(lab.name, lab.config, lab.seen) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--cells", "0"], "'--cells': 0 is not in the range 1<=x<=20", id="cells-0"),
        pytest.param(["--cells", "21"], "'--cells': 21 is not in the range", id="cells-21"),
        pytest.param(["--nodes", "21"], "'--nodes': 21 is not in the range", id="nodes-21"),
        pytest.param(["--pods-per-node", "51"], "'--pods-per-node': 51 is not", id="pods-51"),
        pytest.param(["--pods-per-node", "-1"], "'--pods-per-node': -1 is not", id="pods-neg"),
        pytest.param(["--name", "Bad_Name"], "is not a DNS label", id="name-not-label"),
        pytest.param(["--name", "a" * 17], "at most 16 characters", id="name-too-long"),
        pytest.param(["--cells", "two"], "'two' is not a valid integer", id="cells-word"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    env = {**os.environ, "MESHCTL_CONFIG": str(tmp_path / "meshctl.json")}
    done = subprocess.run(
        [MESHCTL, "lab", "up", *args], capture_output=True, text=True, timeout=30, env=env
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "meshctl.json").exists()


def test_status_of_a_missing_lab_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MESHCTL_CONFIG": str(tmp_path / "meshctl.json")}
    done = subprocess.run(
        [MESHCTL, "lab", "status", "--name", "tnolab", "-o", "json"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "Error: no lab named 'tnolab' (no /run/cellmesh/lab/tnolab/state.json)\n"
    assert json.loads(done.stdout or "null") is None
