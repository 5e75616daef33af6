"""Start and stop the lab's processes, and know them again later by pid *and* start time.

A process is recorded as its argv, pid and ``/proc/<pid>/stat`` start time (clock ticks since
boot): a pid that was reused by another program has another start time, so ``down`` never
signals a process the lab did not start. Processes outlive the ``meshctl`` that started them
(own session, output to a log file). Stopping is SIGTERM, a wait, then SIGKILL, by pid only
(or SIGKILL at once, to rehearse a crash). A process that exits while it is awaited fails with
a `ProcessError` carrying its log, whose last lines (`log_tail`) go into the error shown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CGROUP_JOIN",
    "DAEMONS",
    "ProcessCheck",
    "ProcessError",
    "ServeTarget",
    "alive",
    "http_status",
    "log_tail",
    "pids_with_argument_under",
    "read_starttime",
    "spawn",
    "terminate",
    "wait_serving",
]

# The shell joins the cgroup, then execs the rest: the program is in the cgroup (and keeps the
# shell's pid) before it runs its first instruction.
CGROUP_JOIN = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'


ProcessCheck = Callable[[], bool]  # "is the process still running?"


class ProcessError(RuntimeError):
    """A process could not be started or does not serve; the message names it, `log` its log."""

    def __init__(self, message: str, *, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


def log_tail(log: Path, lines: int = 20) -> str:
    """The last lines of a log (for an error message), or why there are none."""
    try:
        with log.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(cannot read {log}: {e.strerror})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"({log} is empty)"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def read_starttime(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (else init does)."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int | None, starttime: int | None) -> bool:
    """The recorded process still runs: same pid, same start time, not a zombie."""
    if not pid or starttime is None:
        return False
    fields = _stat_fields(pid)
    if fields is None or len(fields) <= 19 or int(fields[19]) != starttime:
        return False
    if fields[0] in ("Z", "X"):
        _reap(pid)
        return False
    return True


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    cgroup: Path | None = None,
    append: bool = True,
    env: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """Start argv detached (own session, stdin /dev/null, output to log); in cgroup if given,
    with ``env`` added to this process's environment.

    Returns (pid, starttime).
    """
    full = ["sh", "-c", CGROUP_JOIN, "sh", str(cgroup), *argv] if cgroup else list(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        with log.open("ab" if append else "wb") as out:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )
    except OSError as e:
        raise ProcessError(f"cannot start {argv[0]}: {e}", log=log) from e
    starttime = read_starttime(proc.pid)
    if starttime is None:
        proc.wait()
        raise ProcessError(f"{argv[0]} exited at once (see {log})", log=log)
    _CHILDREN[proc.pid] = proc  # reaped by `alive` once it has exited
    return proc.pid, starttime


def terminate(
    processes: Iterable[tuple[int, int]],
    *,
    timeout: float = 10.0,
    kill_after: float = 5.0,
    first: signal.Signals = signal.SIGTERM,
) -> list[int]:
    """Send `first` (SIGTERM) to every (pid, starttime) still alive, wait, SIGKILL the rest.

    Returns the pids still alive at the end (normally none).
    """
    pending = {(pid, st) for pid, st in processes if alive(pid, st)}
    if first != signal.SIGKILL:
        for pid, _ in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, first)
        pending = _wait_gone(pending, timeout)
    for pid, _ in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pending = _wait_gone(pending, kill_after)
    return sorted(pid for pid, _ in pending)


def _wait_gone(pending: set[tuple[int, int]], timeout: float) -> set[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while pending:
        pending = {(pid, st) for pid, st in pending if alive(pid, st)}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return pending


DAEMONS = ("etcd", "meshapi", "nodeagent")
MODULE_DAEMONS = ("meshctl.lab.kubeapi",)  # run as ``python -m MODULE``


def pids_with_argument_under(directory: Path) -> list[tuple[int, int]]:
    """The lab's daemons (etcd, meshapi, nodeagent, the Kubernetes API doubles) found by a path
    inside ``directory``.

    Finds them when the state file lost their pids (a crash between start and record): each
    one names a path inside the lab's own state directory on its command line, which no other
    lab's process does (the directory ends with the lab's name).
    """
    prefix = str(directory).rstrip("/") + "/"
    found: list[tuple[int, int]] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        argv = [arg.decode(errors="replace") for arg in raw]
        program = {os.path.basename(arg) for arg in argv[:2]}
        module = len(argv) > 2 and argv[1] == "-m" and argv[2] in MODULE_DAEMONS
        if (program & set(DAEMONS) or module) and any(arg.startswith(prefix) for arg in argv[1:]):
            starttime = read_starttime(int(entry))
            if starttime is not None:
                found.append((int(entry), starttime))
    return found


# --- is it serving? ----------------------------------------------------------------------------


def http_status(host_port: str, path: str, *, timeout: float = 1.0) -> int:
    """GET http://HOST:PORT/path on loopback: the status code, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{host_port}{path}", timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return 0


class ServeTarget(NamedTuple):
    """A process awaited by `wait_serving`: its label, HOST:PORT, liveness check and log."""

    label: str
    address: str
    check: ProcessCheck
    log: Path | None = None


def wait_serving(
    targets: Sequence[ServeTarget],
    *,
    path: str,
    timeout: float,
    what: str,
) -> None:
    """Wait until GET path answers 200 on every target.

    Fails at once when a target's process has exited, naming it (and its log); at the deadline,
    names the targets still not answering and the last status each gave.
    """
    deadline = time.monotonic() + timeout
    pending = {t.label: t for t in targets}
    last: dict[str, int] = {}
    while pending:
        for label, (_, address, check, log) in list(pending.items()):
            if not check():
                raise ProcessError(f"{label} exited (see {log or 'its log'})", log=log)
            last[label] = http_status(address, path)
            if last[label] == 200:
                del pending[label]
        if not pending:
            return
        if time.monotonic() > deadline:
            detail = ", ".join(
                f"{label} ({'HTTP ' + str(last[label]) if last[label] else 'no answer'})"
                for label in sorted(pending)
            )
            raise ProcessError(f"not {what} after {timeout:.0f}s: {detail}")
        time.sleep(0.1)
