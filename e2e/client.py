"""The connectivity suite's client, run inside a pod: who answers, how often, and what failed.

``python -m e2e.client tcp|udp HOST PORT [--count N] [--timeout T] [--interval S] [--duration D]``
makes N attempts (or, with ``--duration``, as many as fit in D seconds), one after the other:

- TCP: connect, read the reply line the echo server (``e2e.echo``) sends on accept, close.
- UDP: a fresh unconnected socket per attempt: ``sendto`` then ``recvfrom``; the reply must come
  from HOST:PORT itself -- for a service VIP that is the socket load balancer's reverse
  translation (recvmsg4); a reply from the backend's own address counts as a failure.

It prints ONE JSON line ``{"replies": {"<cell> <node> <pod>": n}, "failures": n,
"errors": {"<error text>": n}}`` and exits 0 when nothing failed, 1 otherwise (2: bad usage).
Error texts name the step and leave out addresses, so that equal failures add up. Standard
library only: it runs inside pods.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_REPLY = 1024
PAYLOAD = b"cellmesh-connectivity\n"


class AttemptError(Exception):
    """One attempt failed; the message is the error text that is counted."""


@dataclass
class Tally:
    replies: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> int:
        return sum(self.errors.values())

    def as_json(self) -> str:
        return json.dumps(
            {
                "replies": dict(sorted(self.replies.items())),
                "failures": self.failures,
                "errors": dict(sorted(self.errors.items())),
            },
            sort_keys=False,
        )


def _describe(step: str, e: OSError) -> str:
    """``"connect: timed out"``, ``"connect: connection refused"``, ``"read: <strerror>"``."""
    if isinstance(e, TimeoutError):
        return f"{step}: timed out"
    if isinstance(e, ConnectionRefusedError):
        return f"{step}: connection refused"
    if isinstance(e, ConnectionResetError):
        return f"{step}: connection reset"
    if e.errno is not None:
        name = errno.errorcode.get(e.errno, str(e.errno))
        return f"{step}: {e.strerror or name} ({name})"
    return f"{step}: {e}"


def _reply_line(data: bytes) -> str:
    line = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if not line:
        raise AttemptError("read: empty reply")
    return line


def tcp_attempt(host: str, port: int, timeout: float) -> str:
    """Connect, read one line, close; the line, or AttemptError."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise AttemptError(_describe("connect", e)) from None
    with sock:
        data = b""
        try:
            while b"\n" not in data and len(data) < MAX_REPLY:
                chunk = sock.recv(MAX_REPLY)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise AttemptError(_describe("read", e)) from None
    if not data:
        raise AttemptError("read: connection closed without a reply")
    return _reply_line(data)


def udp_attempt(host: str, port: int, timeout: float) -> str:
    """Send one datagram from a fresh unconnected socket; the reply line from HOST:PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(PAYLOAD, (host, port))
        except OSError as e:
            raise AttemptError(_describe("send", e)) from None
        try:
            data, source = sock.recvfrom(MAX_REPLY)
        except OSError as e:
            raise AttemptError(_describe("receive", e)) from None
    if (source[0], source[1]) != (host, port):
        raise AttemptError(
            f"reply from {source[0]}:{source[1]}, not from {host}:{port} "
            "(no reverse translation of the reply's source)"
        )
    return _reply_line(data)


Attempt = Callable[[str, int, float], str]
ATTEMPTS: dict[str, Attempt] = {"tcp": tcp_attempt, "udp": udp_attempt}


def run(
    attempt: Attempt,
    host: str,
    port: int,
    *,
    count: int,
    timeout: float,
    interval: float,
    duration: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Tally:
    """``count`` attempts; with ``duration``, attempts (at least one) while the next one would
    still start before ``duration`` has passed (``count`` ignored)."""
    tally = Tally()
    end = clock() + duration if duration is not None else None
    done = 0
    while True:
        try:
            tally.replies[attempt(host, port, timeout)] += 1
        except AttemptError as e:
            tally.errors[str(e)] += 1
        done += 1
        if end is None and done >= count:
            return tally
        if end is not None and clock() + interval >= end:
            return tally
        if interval > 0:
            sleep(interval)  # pacing between attempts, not a wait for a condition


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.client", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("protocol", choices=sorted(ATTEMPTS))
    parser.add_argument("host", help="IPv4 address (a pod or a service VIP)")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1, help="attempts (default 1)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between attempts")
    parser.add_argument(
        "--duration", type=float, help="attempt until this many seconds passed (ignores --count)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"port {args.port} is not in 1-65535")
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.timeout <= 0 or args.interval < 0 or (args.duration is not None and args.duration <= 0):
        parser.error("--timeout and --duration must be positive, --interval not negative")
    try:
        host = socket.gethostbyname(args.host)
    except OSError as e:
        parser.error(f"cannot resolve {args.host!r}: {e}")
    tally = run(
        ATTEMPTS[args.protocol],
        host,
        args.port,
        count=args.count,
        timeout=args.timeout,
        interval=args.interval,
        duration=args.duration,
    )
    print(tally.as_json(), flush=True)
    return 0 if tally.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
