"""``e2e.client`` against the real echo server (a subprocess on 127.0.0.1): counts and JSON."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.client import AttemptError, run, udp_attempt
from meshcore.localetcd import free_loopback_port
from tests.conftest import REPO
from tests.e2e.conftest import EchoServer


def client(*args: str) -> tuple[int, dict[str, Any], str]:
    """Run the client as a pod would: a process; its exit code, its JSON line, its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "e2e.client", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert len(lines) <= 1, done.stdout
    return done.returncode, json.loads(lines[0]) if lines else {}, done.stderr


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_counts_every_reply(echo_server: EchoServer, protocol: str) -> None:
    code, result, stderr = client(
        protocol, "127.0.0.1", str(echo_server.port), "--count", "7", "--timeout", "0.5"
    )
    assert (code, stderr) == (0, "")
    assert result == {"replies": {echo_server.line: 7}, "failures": 0, "errors": {}}


def test_interval_and_default_count(echo_server: EchoServer) -> None:
    code, result, _ = client("tcp", "127.0.0.1", str(echo_server.port), "--interval", "0.01")
    assert code == 0
    assert result["replies"] == {echo_server.line: 1}


def test_tcp_refused_is_counted_by_error() -> None:
    port = free_loopback_port()  # nothing listens there any more
    code, result, _ = client("tcp", "127.0.0.1", str(port), "--count", "3", "--timeout", "1")
    assert code == 1
    assert result == {"replies": {}, "failures": 3, "errors": {"connect: connection refused": 3}}


def test_udp_without_answer_times_out() -> None:
    port = free_loopback_port()
    code, result, _ = client("udp", "127.0.0.1", str(port), "--count", "2", "--timeout", "0.2")
    assert code == 1
    assert result == {"replies": {}, "failures": 2, "errors": {"receive: timed out": 2}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tcp", "127.0.0.1", "0"], "port 0 is not in 1-65535"),
        (["tcp", "127.0.0.1", "80", "--count", "0"], "--count must be at least 1"),
        (["sctp", "127.0.0.1", "80"], "invalid choice"),
        (["udp", "127.0.0.1", "80", "--timeout", "0"], "--timeout and --duration"),
    ],
)
def test_bad_usage_exits_2_without_traceback(args: list[str], message: str) -> None:
    code, result, stderr = client(*args)
    assert code == 2
    assert result == {}
    assert message in stderr
    assert "Traceback" not in stderr


@contextlib.contextmanager
def udp_responder(*, reply_from_other_port: bool) -> Iterator[int]:
    """A UDP echo on 127.0.0.1:P answering "beta b1 udp-1"; optionally from another port,
    which is what a missing reverse translation looks like to the client."""
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbound.bind(("127.0.0.1", 0))
    outbound.bind(("127.0.0.1", 0))
    inbound.settimeout(0.1)
    sender_socket = outbound if reply_from_other_port else inbound
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                _, sender = inbound.recvfrom(64)
            except TimeoutError:
                continue
            sender_socket.sendto(b"beta b1 udp-1\n", sender)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield inbound.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        inbound.close()
        outbound.close()


def test_udp_counts_replies_from_the_address_sent_to() -> None:
    with udp_responder(reply_from_other_port=False) as port:
        code, result, _ = client("udp", "127.0.0.1", str(port), "--count", "5")
    assert code == 0
    assert result == {"replies": {"beta b1 udp-1": 5}, "failures": 0, "errors": {}}


@pytest.fixture
def misrouting_udp_server() -> Iterator[int]:
    with udp_responder(reply_from_other_port=True) as port:
        yield port


def test_udp_reply_must_come_from_the_address_sent_to(misrouting_udp_server: int) -> None:
    port = misrouting_udp_server
    with pytest.raises(AttemptError, match=r"reply from 127\.0\.0\.1:\d+, not from 127\.0\.0\.1"):
        udp_attempt("127.0.0.1", port, 1.0)
    code, result, _ = client("udp", "127.0.0.1", str(port), "--count", "2")
    assert code == 1
    assert result["failures"] == 2
    [(text, n)] = result["errors"].items()
    assert n == 2
    assert "no reverse translation" in text


def test_duration_attempts_until_time_is_up() -> None:
    now = [0.0]  # binary fractions: the sums below are exact
    attempts: list[float] = []

    def attempt(host: str, port: int, timeout: float) -> str:
        attempts.append(now[0])
        now[0] += 0.25
        if len(attempts) == 2:
            raise AttemptError("connect: timed out")
        return "alpha a1 p"

    tally = run(
        attempt,
        "10.0.0.1",
        80,
        count=1,
        timeout=1.0,
        interval=0.25,
        duration=2.0,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert len(attempts) == 4  # at 0.0, 0.5, 1.0, 1.5: a fifth would start at 2.0
    assert tally.replies == {"alpha a1 p": 3}
    assert dict(tally.errors) == {"connect: timed out": 1}
    assert json.loads(tally.as_json())["failures"] == 1
