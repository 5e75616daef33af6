"""What every `bench/` script shares: its error type, signal-safe clean-up, and its ``main``.

A bench builds real resources (etcd processes, pinned maps, cgroups), so Ctrl-C and SIGTERM must
end in the same clean-up as a normal run: `interruptible` turns SIGTERM into KeyboardInterrupt
inside its body and runs the release with both signals ignored, so a second signal cannot cut it
short. `bench_main` prints the figures as ONE JSON line (exit 0), a `BenchError` as one line
(exit 1), an interrupt as one line (exit 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any


class BenchError(RuntimeError):
    """The benchmark cannot run or saw a wrong result; the message says which."""


async def paced(count: int, rate: float) -> AsyncIterator[tuple[int, float]]:
    """Open loop: yield 0..count-1 on a fixed schedule of `rate` per second, each with how late
    (seconds) it is against its slot; the caller must not wait for earlier changes in between."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.01
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i, max(0.0, loop.time() - due)


def ratio(numerator: dict[str, float], denominator: dict[str, float]) -> dict[str, float]:
    """p50 and p99 of one latency summary divided by another's (the figure a bench reports)."""
    return {q: round(numerator[q] / max(denominator[q], 1e-9), 2) for q in ("p50", "p99")}


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interruptible(name: str, release: Callable[[], list[str]]) -> Iterator[None]:
    """Run the body with SIGTERM as KeyboardInterrupt; then ``release()``, shielded from both
    signals, and print what it could not remove."""
    previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        yield
    finally:
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            problems = release()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)
        for problem in problems:
            print(f"{name}: left behind: {problem}", file=sys.stderr)


def bench_main(name: str, run: Callable[[], dict[str, Any]]) -> int:
    load_before = os.getloadavg()
    try:
        figures = run()
    except BenchError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{name}: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    # Every line carries the machine and its load (figures on a shared machine need both).
    line = {
        "bench": name,
        "kernel": os.uname().release,
        "nproc": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        **figures,
    }
    print(json.dumps(line, separators=(",", ":")))
    return 0
