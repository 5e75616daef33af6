"""Start and stop a private etcd process on loopback, for the lab and the test suite.

Each instance gets its own data directory and two free loopback ports (client and peer). The
process is ended by its own pid, never by name, so other etcd processes on the machine are safe.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ETCD_BINARY = "etcd"


class EtcdStartError(RuntimeError):
    """etcd did not become healthy; the message carries the tail of its log."""


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on the loopback address a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalEtcd:
    """One etcd member listening on 127.0.0.1 only."""

    data_dir: Path
    name: str = "cellmesh"
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, *, timeout: float = 20.0) -> None:
        """Start etcd (reusing the data directory if it exists) and wait until it is healthy."""
        if shutil.which(ETCD_BINARY) is None:
            raise EtcdStartError("etcd is not installed: run `make setup` (Debian etcd-server)")
        if not self.client_port:
            self.client_port = free_loopback_port(self.host)
        if not self.peer_port:
            self.peer_port = free_loopback_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        peer_url = f"http://{self.host}:{self.peer_port}"
        args = [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self.wait_healthy(timeout=timeout)

    def wait_healthy(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with {self.process.returncode}: {self._log_tail()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp,
            ):
                if b'"health":"true"' in resp.read():
                    return
            time.sleep(0.05)
        self.stop()
        raise EtcdStartError(f"etcd not healthy after {timeout:.0f}s: {self._log_tail()}")

    def stop(self, *, timeout: float = 10.0) -> None:
        """End the process we started (by pid) and reap it. Safe to call twice."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def wipe(self) -> None:
        """Stop and delete the data directory (the next start is an empty store)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])
