"""Backoff is data: a list of delays, jitter on top, and a sleep that can be cut short.

The one backoff of every retry loop outside the agent's reconciler: meshapi's etcd watch cache
and writer (`Backoff` with their own delays, no jitter: one process retrying its own etcd), the
list-watchers and the agent's peer watchers (jitter, and a probe that cuts the wait short).

A watcher that lost its peer waits `backoff_delay(delays, attempt)` between tries. Long waits
are for peers that stay away; a peer that comes back must not pay the rest of the wait: when the
failure was about reaching the peer, `backoff_sleep` probes it (a cheap TCP connect) every
PROBE_INTERVAL while it sleeps and wakes as soon as a probe succeeds. The caller decides when
probing makes sense: not after an error the peer itself sent. After a wake-up that was not
followed by a working stream, only a probe that fails and then succeeds counts
(`seen_down=False`): an address that accepts TCP but serves nothing must not become a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = [
    "BACKOFF",
    "JITTER",
    "PROBE_INTERVAL",
    "Backoff",
    "Probe",
    "backoff_delay",
    "backoff_sleep",
    "sleep",
]

# Delays in seconds, the last one repeats; jitter (up to +50 %) is added on top.
BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
JITTER = 0.5
PROBE_INTERVAL = 0.2

Probe = Callable[[], Awaitable[bool]]


def backoff_delay(
    delays: tuple[float, ...],
    attempt: int,
    *,
    jitter: float = JITTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait before try `attempt` + 1 (0-based attempts; the last delay repeats), plus up to
    `jitter` times itself at random."""
    delay = delays[min(attempt, len(delays) - 1)]
    return delay * (1 + rand() * jitter) if jitter else delay


@dataclass
class Backoff:
    """A retry loop's failures in a row, and the wait before its next try."""

    delays: tuple[float, ...] = BACKOFF
    jitter: float = JITTER
    rand: Callable[[], float] = random.random
    failures: int = 0

    def next_delay(self) -> float:
        """The wait after one more failure (counts it)."""
        delay = backoff_delay(self.delays, self.failures, jitter=self.jitter, rand=self.rand)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A try worked: the next failure waits the first delay again."""
        self.failures = 0


async def sleep(delay: float, *, wakeup: asyncio.Event | None = None) -> bool:
    """Sleep `delay` seconds, or until `wakeup` is set; True when woken early."""
    if wakeup is None:
        await asyncio.sleep(delay)
        return False
    try:
        async with asyncio.timeout(delay):
            await wakeup.wait()
    except TimeoutError:
        return False
    return True


async def _wake_on_return(
    probe: Probe, wakeup: asyncio.Event, interval: float, *, seen_down: bool
) -> None:
    if not seen_down and await probe():
        return  # reachable now, so not "back": sleep it out (one probe per wait)
    while True:
        if await probe():
            wakeup.set()
            return
        await asyncio.sleep(interval)


async def backoff_sleep(
    delay: float,
    *,
    probe: Probe | None = None,
    seen_down: bool = True,
    interval: float = PROBE_INTERVAL,
) -> bool:
    """Sleep `delay`, cut short when `probe` finds the peer back; True when cut short.

    `seen_down`: the peer is known to have been unreachable, so the first successful probe means
    it is back. Otherwise it counts as back only after a probe failed: a peer that is reachable
    when the wait starts is probed once, not every interval.
    """
    if probe is None:
        return await sleep(delay)
    wakeup = asyncio.Event()
    task = asyncio.create_task(_wake_on_return(probe, wakeup, interval, seen_down=seen_down))
    try:
        return await sleep(delay, wakeup=wakeup)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
