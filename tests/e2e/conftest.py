"""Fixtures for the connectivity suite's unit tests: an echo server on loopback.

``echo_server`` runs ``python -m e2e.echo`` as a subprocess on 127.0.0.1 (a free port, TCP and
UDP) and ends it by its pid. What needs a mesh runs against a real lab (tests/lab).
"""

from __future__ import annotations

import selectors
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshcore.localetcd import free_loopback_port
from tests.conftest import REPO


@dataclass(frozen=True)
class EchoServer:
    port: int
    line: str  # what it answers, without the newline


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    port = free_loopback_port()
    argv = [
        sys.executable,
        "-m",
        "e2e.echo",
        "--cell",
        "alpha",
        "--node",
        "a1",
        "--pod",
        "echo-1",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=10), "the echo server did not print 'ready' within 10s"
        assert proc.stdout.readline() == b"ready\n"
        yield EchoServer(port, "alpha a1 echo-1")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
