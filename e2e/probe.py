"""Probes: run ``e2e.client`` inside a pod through the driver and read what it saw; poll them.

Flow: a test asks ``Prober.probe(client_pod, "tcp", host, port)`` -> ``driver.exec`` runs
``python -m e2e.client`` in the pod -> its one JSON line -> ``Observation`` (replies per backend,
failures per error). ``wait_until`` repeats an observation until a predicate holds or a deadline
passes (never a bare sleep); the last observation goes into the failure detail.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from e2e.driver import MeshDriver, Pod

__all__ = [
    "Backend",
    "CheckFailed",
    "Observation",
    "ProbeError",
    "Prober",
    "Waited",
    "wait_until",
]

T = TypeVar("T")


class CheckFailed(Exception):
    """A test's expectation did not hold; the message is the readable detail."""


class ProbeError(CheckFailed):
    """The client could not run in the pod, or printed something that is not its JSON."""


@dataclass(frozen=True, order=True)
class Backend:
    """Who answered: the echo server's ``"<cell> <node> <pod>"`` line."""

    cell: str
    node: str
    pod: str

    def __str__(self) -> str:
        return f"{self.cell}/{self.node}/{self.pod}"

    @staticmethod
    def parse(line: str) -> Backend:
        parts = line.split()
        if len(parts) != 3:
            return Backend("?", "?", line)
        return Backend(*parts)


@dataclass(frozen=True)
class Observation:
    """What one client run (or several, added up) saw."""

    replies: Mapping[Backend, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(self.errors.values())

    @property
    def answered(self) -> int:
        return sum(self.replies.values())

    def cells(self) -> set[str]:
        return {b.cell for b in self.replies}

    def pods(self) -> set[str]:
        return {b.pod for b in self.replies}

    def only_from(self, cell: str) -> bool:
        """Every attempt answered, all by backends of ``cell``."""
        return self.answered > 0 and not self.failures and self.cells() == {cell}

    def __add__(self, other: Observation) -> Observation:
        return Observation(
            replies=dict(Counter(self.replies) + Counter(other.replies)),
            errors=dict(Counter(self.errors) + Counter(other.errors)),
        )

    def describe(self) -> str:
        """``"20 attempts: 12 from alpha/a1/x, 8 from beta/b1/y"`` (+ failures with errors)."""
        total = self.answered + self.failures
        parts = [f"{n} from {b}" for b, n in sorted(self.replies.items())]
        if self.failures:
            errors = ", ".join(f"{text} x{n}" for text, n in sorted(self.errors.items()))
            parts.append(f"{self.failures} failed ({errors})")
        return f"{total} attempts: {', '.join(parts) or 'nothing'}"

    @staticmethod
    def from_json(text: str) -> Observation:
        data = json.loads(text)
        replies = data["replies"]
        errors = data["errors"]
        if not isinstance(replies, dict) or not isinstance(errors, dict):
            raise ValueError("replies and errors must be objects")
        parsed: Counter[Backend] = Counter()
        for line, n in replies.items():
            parsed[Backend.parse(str(line))] += int(n)
        return Observation(dict(parsed), {str(k): int(v) for k, v in errors.items()})


@dataclass
class Prober:
    """Runs the client in pods of a mesh."""

    driver: MeshDriver
    attempt_timeout: float = 1.0

    def probe(
        self,
        client: Pod,
        protocol: str,
        host: str,
        port: int,
        *,
        count: int = 20,
        interval: float = 0.0,
        duration: float | None = None,
    ) -> Observation:
        argv = [
            self.driver.python(),
            "-m",
            "e2e.client",
            protocol,
            host,
            str(port),
            "--count",
            str(count),
            "--timeout",
            str(self.attempt_timeout),
            "--interval",
            str(interval),
        ]
        if duration is not None:
            argv += ["--duration", str(duration)]
            budget = duration + self.attempt_timeout + 20.0
        else:
            budget = count * (self.attempt_timeout + interval) + 20.0
        where = f"pod {client.cell}/{client.node}/{client.name}"
        try:
            result = self.driver.exec(client.cell, client.node, client.name, argv, timeout=budget)
        except Exception as e:  # the driver's own errors: report, never a traceback
            raise ProbeError(f"cannot run the client in {where}: {e}") from e
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if result.returncode not in (0, 1) or not lines:
            stderr = result.stderr.strip().splitlines()
            tail = stderr[-1] if stderr else "no output"
            raise ProbeError(
                f"the client failed in {where} (exit {result.returncode}): {tail} -- can the "
                "driver's python import e2e inside pods?"
            )
        try:
            return Observation.from_json(lines[-1])
        except (ValueError, KeyError, TypeError) as e:
            raise ProbeError(
                f"the client in {where} printed {lines[-1][:200]!r}, not its JSON line: {e}"
            ) from e


@dataclass(frozen=True)
class Waited(Generic[T]):
    ok: bool
    last: T
    elapsed: float


def wait_until(
    observe: Callable[[], T],
    satisfied: Callable[[T], bool],
    *,
    timeout: float,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Waited[T]:
    """Observe until ``satisfied`` or ``timeout`` seconds passed; at least one observation."""
    start = clock()
    while True:
        last = observe()
        if satisfied(last):
            return Waited(True, last, clock() - start)
        if clock() - start >= timeout:
            return Waited(False, last, clock() - start)
        sleep(interval)  # between two observations of a condition with a deadline
