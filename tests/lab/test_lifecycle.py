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

from tests.lab.conftest import (
    FAILED_LOGS,
    MESHCTL,
    PYTHON,
    Lab,
    bpffs_mounts,
    leftovers,
    recorded_processes,
)

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
    error = done.stderr[done.stderr.index("Error: ") :].splitlines()
    assert error[0].startswith("Error: lab up failed at etcd (1): etcd of alpha exited"), error
    # The log the error points to survives the clean-up, and its last lines are in the error.
    kept = FAILED_LOGS / lab.name / "alpha-etcd.log"
    assert error[1] == f"logs kept in {FAILED_LOGS / lab.name}/"
    assert error[2:] == [f"last lines of {kept}:", "  | etcd: cannot start"]
    assert kept.read_text() == "etcd: cannot start\n"
    assert "Traceback" not in done.stderr
    assert leftovers(lab.name, lab.config, lab.seen) == []


# Makes every `nodeagent` of the lab exit at start-up, saying so (Python imports sitecustomize
# from PYTHONPATH before running the console script; meshctl and meshapi are not affected).
FAILING_AGENT = """\
import os, sys
if os.path.basename(sys.argv[0]) == "nodeagent":
    print("agent: injected failure at start-up", file=sys.stderr)
    sys.exit(5)
"""


def test_a_failing_agent_keeps_its_log_and_shows_its_last_lines(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAILING_AGENT)
    done = lab.lab(
        "up", "--cells", "1", "--nodes", "1", "--pods-per-node", "0",
        extra_env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    assert done.returncode == 1
    kept = FAILED_LOGS / lab.name / "alpha-node0-agent.log"
    error = done.stderr[done.stderr.index("Error: ") :]
    assert error.startswith(
        f"Error: lab up failed at node agents (1): agent alpha/node0 exited (see {kept})"
    ), error
    assert f"\nlast lines of {kept}:\n" in error
    assert "  | agent: injected failure at start-up" in error.splitlines()
    assert "agent: injected failure at start-up" in kept.read_text()
    # The other logs of the failed up are kept too; the lab itself is gone.
    assert (FAILED_LOGS / lab.name / "alpha-meshapi.log").exists()
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


# A host without bpffs, as a fresh machine is: in a private mount namespace (the host's own
# bpffs is untouched), /sys/fs/bpf is unmounted; then `lab up` (its agents all start at once,
# each ensuring bpffs) and `lab down`, counting the bpf mounts at /sys/fs/bpf after each.
FRESH_HOST = r"""
import json, subprocess, sys
meshctl, name = sys.argv[1], sys.argv[2]

def bpf_mounts():
    count = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            if fields.split()[4] == "/sys/fs/bpf" and rest.split()[0] == "bpf":
                count += 1
    return count

subprocess.run(["umount", "/sys/fs/bpf"], check=True)
result = {"before": bpf_mounts()}
up = subprocess.run([meshctl, "lab", "up", "--name", name, "--cells", "1", "--nodes", "4",
                     "--pods-per-node", "0", "--wait"], capture_output=True, text=True)
result |= {"up": up.returncode, "up_stderr": up.stderr, "after_up": bpf_mounts()}
down = subprocess.run([meshctl, "lab", "down", "--name", name], capture_output=True, text=True)
result |= {"down": down.returncode, "down_stderr": down.stderr, "after_down": bpf_mounts()}
print(json.dumps(result))
"""


def test_first_up_on_a_host_without_bpffs_mounts_it_once(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    env = {**os.environ, "MESHCTL_CONFIG": str(lab.config)}
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", PYTHON, "-c", FRESH_HOST, MESHCTL, lab.name],
        capture_output=True, text=True, timeout=180, env=env, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["before"] == 0
    assert result["up"] == 0, result["up_stderr"]
    assert result["after_up"] == 1, "agents starting together stacked bpffs mounts"
    assert result["down"] == 0, result["down_stderr"]
    assert result["after_down"] == 1
    assert bpffs_mounts() == 1  # the host's own, untouched
