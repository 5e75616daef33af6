"""The interruptible backoff: a probe cuts a wait short when the peer is back, and never turns an
address that accepts TCP but serves nothing into a hot retry loop.

The probes here are plain functions (the `Probe` interface is "is the peer reachable now?");
the ListWatcher's source is a scripted `WatchSource` that fails the way a lost connection does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable

import pytest

from meshcore.backoff import Backoff, backoff_delay, backoff_sleep, sleep
from meshcore.errors import ErrorClass, PeerUnavailable
from meshcore.model import Kind
from meshcore.watch.listwatch import ListWatcher
from meshcore.wire import pb
from tests.conftest import wait_for


class CountingProbe:
    """Unreachable for the first `down` probes, reachable afterwards."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.down


def test_delays_are_data_with_jitter_on_top() -> None:
    delays = (0.05, 0.1, 5.0)
    assert backoff_delay(delays, 0, rand=lambda: 0.0) == 0.05
    assert backoff_delay(delays, 1, rand=lambda: 1.0) == pytest.approx(0.15)
    assert backoff_delay(delays, 9, rand=lambda: 0.0) == 5.0  # the last one repeats


def test_jitter_is_a_fraction_of_the_delay_and_may_be_off() -> None:
    assert backoff_delay((2.0,), 0, jitter=0.25, rand=lambda: 1.0) == pytest.approx(2.5)
    assert backoff_delay((2.0,), 5, jitter=0.0, rand=lambda: 1.0) == 2.0


def test_a_backoff_counts_failures_and_starts_over_after_a_success() -> None:
    backoff = Backoff((0.1, 0.2, 0.5), jitter=0.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.1, 0.2, 0.5, 0.5, 0.5]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.next_delay() == 0.1
    jittered = Backoff((1.0,), rand=lambda: 1.0)
    assert jittered.next_delay() == pytest.approx(1.5)  # the default jitter: up to +50 %


async def test_wakeup_event_ends_the_sleep() -> None:
    wakeup = asyncio.Event()
    asyncio.get_running_loop().call_soon(wakeup.set)
    started = time.monotonic()
    assert await sleep(30.0, wakeup=wakeup) is True
    assert time.monotonic() - started < 1.0
    assert await sleep(0.01, wakeup=asyncio.Event()) is False


async def test_a_peer_that_comes_back_cuts_the_wait_short() -> None:
    probe = CountingProbe(down=3)
    started = time.monotonic()
    assert await backoff_sleep(30.0, probe=probe, interval=0.01) is True
    assert time.monotonic() - started < 1.0
    assert probe.calls == 4


async def test_a_reachable_peer_is_probed_once_unless_known_down() -> None:
    probe = CountingProbe(down=0)
    assert await backoff_sleep(0.2, probe=probe, seen_down=False, interval=0.01) is False
    assert probe.calls == 1
    # Known down (the failure was a lost connection): the first success means it is back.
    assert await backoff_sleep(30.0, probe=CountingProbe(down=0)) is True
    # Not known down: a failed probe, then a successful one.
    probe = CountingProbe(down=2)
    assert await backoff_sleep(30.0, probe=probe, seen_down=False, interval=0.01) is True
    assert probe.calls == 3


class RefusingSource:
    """Every watch fails as a connection that was lost; counts the tries."""

    def __init__(self) -> None:
        self.tries = 0

    async def watch(
        self, kinds: Iterable[Kind] = (), *, resume_revision: int = 0, resume_epoch: str = ""
    ) -> AsyncIterator[pb.WatchBatch]:
        self.tries += 1
        err = PeerUnavailable("127.0.0.1:1: UNAVAILABLE: Socket closed")
        err.error_class = ErrorClass.TCP
        raise err
        yield pb.WatchBatch()  # pragma: no cover - makes this an async generator


async def test_an_address_that_accepts_but_serves_nothing_is_not_a_hot_loop() -> None:
    source = RefusingSource()
    always = CountingProbe(down=0)
    watcher = ListWatcher(source, backoff=(0.05, 0.1, 0.2, 0.4), probe=always)
    task = asyncio.create_task(watcher.run())
    try:
        await wait_for(lambda: source.tries >= 6, what="six tries")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # One wake-up (the first wait); after it, a probe that always succeeds proves nothing, so
    # the watcher waits out its growing delays and probes once per wait.
    assert watcher.stats.probe_wakeups == 1
    assert always.calls <= source.tries
    assert watcher.stats.last_error_class == "tcp"
