"""Fixtures for the lab's tests: ``meshctl lab`` run as an operator runs it, and proof of cleanup.

Every lab gets a unique name (``t<hex>``; the prefix from ``CELLMESH_TEST_LAB_PREFIX`` when
set) and a private contexts file; every finalizer runs ``meshctl lab down`` (also when the test
failed) and then checks that nothing is left: no namespace, cgroup or pin with the lab's prefix,
no recorded process alive, no state directory, no context, and the host's root network namespace
exactly as before (links, addresses, routes). Logs a failed ``up`` kept are removed too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MESHCTL = str(Path(sys.executable).parent / "meshctl")
PYTHON = sys.executable
LAB_PREFIX = os.environ.get("CELLMESH_TEST_LAB_PREFIX", "t")
FAILED_LOGS = Path("/run/cellmesh/lab-failed")  # where a failed `up` keeps its logs

# A client run inside a pod: one TCP connect or UDP exchange, retried until a deadline (routes
# and registrations propagate asynchronously); prints the echo server's reply line.
CLIENT = r"""
import socket, sys, time
host, port, proto, patience = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + patience
while True:
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=1) as s:
                data = s.recv(200)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                s.sendto(b"hello", (host, port))
                data = s.recv(200)
        print(data.decode().strip(), flush=True)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            print("failed:", type(e).__name__, e, file=sys.stderr)
            sys.exit(1)
        time.sleep(0.2)
"""


def run(
    *args: str,
    config: Path,
    timeout: float = 120,
    path: str | None = None,
    extra_env: dict[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """``meshctl ARGS`` with the lab's contexts file (and PATH or more variables, when given)."""
    env = {**os.environ, "MESHCTL_CONFIG": str(config), **(extra_env or {})}
    env.pop("MESHCTL_CONTEXT", None)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [MESHCTL, *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


def ip_json(*args: str) -> Any:
    """``ip -j ARGS``, parsed."""
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def root_netns_snapshot() -> dict[str, Any]:
    """The host namespace's links, addresses and routes (address lifetimes left out)."""
    addrs = ip_json("addr")
    for link in addrs:
        for info in link.get("addr_info", []):
            info.pop("valid_life_time", None)
            info.pop("preferred_life_time", None)
    return {
        "links": ip_json("link"),
        "addrs": addrs,
        "routes": ip_json("route", "show", "table", "all"),
    }


def bpffs_mounts(mountpoint: str = "/sys/fs/bpf") -> int:
    """How many bpf filesystems are mounted at mountpoint (stacked mounts count each)."""
    count = 0
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        if fields.split()[4] == mountpoint and rest.split()[0] == "bpf":
            count += 1
    return count


def _starttime(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def pid_alive(pid: int, starttime: int) -> bool:
    """The very process (pid and start time), not a zombie."""
    return _starttime(pid) == starttime


def recorded_processes(name: str) -> list[tuple[int, int]]:
    """(pid, start time) of every process in the lab's state file (empty when there is none)."""
    path = Path(f"/run/cellmesh/lab/{name}/state.json")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    found = []
    for cell in state["cells"]:
        blocks = [cell.get(p) for p in ("etcd_process", "kubeapi_process", "meshapi_process")]
        for node in cell["nodes"]:
            blocks.append(node.get("agent"))
            blocks += [pod.get("process") for pod in node["pods"]]
        found += [(b["pid"], b["starttime"]) for b in blocks if b and b.get("pid")]
    return found


def leftovers(name: str, config: Path, pids: list[tuple[int, int]]) -> list[str]:
    """Everything of lab ``name`` still on the host; empty when it is all gone."""
    left = [f"netns {n}" for n in os.listdir("/var/run/netns") if n.startswith(f"cml-{name}-")]
    left += [
        f"cgroup {c}"
        for c in os.listdir("/sys/fs/cgroup/unified")
        if c.startswith(f"cellmesh-lab-{name}-")
    ]
    pins = Path("/sys/fs/bpf/cellmesh")
    if pins.exists():
        left += [f"pin {p}" for p in os.listdir(pins) if p.startswith(f"{name}-")]
    left += [f"pid {pid}" for pid, st in pids if pid_alive(pid, st)]
    if Path(f"/run/cellmesh/lab/{name}").exists():
        left.append("state directory")
    if config.exists():
        contexts = json.loads(config.read_text())["contexts"]
        left += [f"context {c}" for c in contexts if c.startswith(f"{name}-")]
    return left


def wait_gone(name: str, config: Path, pids: list[tuple[int, int]], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (left := leftovers(name, config, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"lab {name} left behind: {left}"


@dataclass
class Lab:
    """A lab name, its contexts file, and every pid it was ever seen with (for the checks)."""

    name: str
    config: Path
    seen: list[tuple[int, int]] = field(default_factory=list)
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def meshctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run(*args, config=self.config, **kwargs)

    def lab(self, command: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        done = self.meshctl("lab", command, "--name", self.name, *args, **kwargs)
        self.remember()
        return done

    def remember(self) -> None:
        self.seen += [p for p in recorded_processes(self.name) if p not in self.seen]

    def status(self) -> dict[str, Any]:
        done = self.lab("status", "-o", "json")
        assert done.returncode == 0, done.stderr
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def exec(self, target: str, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.lab("exec", target, "--", *argv, **kwargs)

    def reach(self, source: str, host: str, proto: str, patience: float = 20) -> str:
        """The reply line of the echo server at host:8080, from inside pod ``source``."""
        done = self.exec(source, PYTHON, "-c", CLIENT, host, "8080", proto, str(patience))
        assert done.returncode == 0, f"{source} -> {host} {proto}: {done.stderr}"
        return done.stdout.strip()

    def down_and_check(self) -> None:
        self.remember()
        done = self.lab("down")
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        shutil.rmtree(FAILED_LOGS / self.name, ignore_errors=True)
        wait_gone(self.name, self.config, self.seen)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def new_lab(tmp: Path) -> Lab:
    tmp.mkdir(parents=True, exist_ok=True)
    return Lab(name=f"{LAB_PREFIX}{secrets.token_hex(4)}", config=tmp / "meshctl.json")


@contextlib.contextmanager
def connected_lab(tmp: Path) -> Iterator[Lab]:
    """A 2 cells x 2 nodes lab with one pod per node, its cells joined the way an operator joins
    them (``meshctl connect``); torn down and checked afterwards, also when the body failed."""
    made = new_lab(tmp)
    with cleaned_up([made]):
        up = made.lab("up", "--cells", "2", "--nodes", "2", "--pods-per-node", "1", "--wait")
        assert up.returncode == 0, up.stderr
        connect = made.meshctl(
            "connect", "--context", f"{made.name}-alpha", "--destination-context",
            f"{made.name}-beta",
        )  # fmt: skip
        assert connect.returncode == 0, connect.stderr
        yield made


@contextlib.contextmanager
def cleaned_up(labs: list[Lab]) -> Iterator[None]:
    """Run the body; then ``down`` every lab (also after a failure) and prove nothing is left,
    the host's root namespace included."""
    before = root_netns_snapshot()
    try:
        yield
    finally:
        failures = []
        for lab in labs:
            try:
                lab.down_and_check()
            except AssertionError as e:
                failures.append(str(e))
        assert not failures, failures
        assert root_netns_snapshot() == before, "the host's root network namespace changed"


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[[], Lab]]:
    """New lab names (each torn down and checked at the end, even when the test fails)."""
    labs: list[Lab] = []

    def make() -> Lab:
        lab = new_lab(tmp_path / str(len(labs)))
        labs.append(lab)
        return lab

    with cleaned_up(labs):
        yield make
