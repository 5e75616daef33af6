"""Results of a connectivity run and how they are shown: a table or one JSON document.

Flow: the runner (``e2e.suite``) produces one ``TestResult`` per test, passed / failed / skipped,
plus any cleanup problems, in a ``SuiteReport``; ``report_json`` renders it as one document (the
CLI renders the table, ``meshctl.connectivity_commands.format_table``, with ``format_duration``
and ``summary_line``) and ``exit_code`` decides the command's status (1 on any failure or
unclean cleanup). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "Outcome",
    "SuiteReport",
    "TestResult",
    "exit_code",
    "format_duration",
    "report_json",
    "summary_line",
]


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class TestResult:
    """One test's outcome; ``detail`` says what was seen (or, when skipped, why)."""

    __test__ = False  # not a pytest test class

    name: str
    outcome: Outcome
    duration: float  # seconds
    detail: str = ""


@dataclass(frozen=True)
class SuiteReport:
    source: str  # cell A: where the clients run
    destination: str  # cell B
    results: tuple[TestResult, ...]
    cleanup_errors: tuple[str, ...] = field(default=())

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def summary_line(report: SuiteReport) -> str:
    """``"7 passed, 1 failed"``, with ``", 3 skipped"`` when any was skipped."""
    text = f"{report.count(Outcome.PASSED)} passed, {report.count(Outcome.FAILED)} failed"
    skipped = report.count(Outcome.SKIPPED)
    return f"{text}, {skipped} skipped" if skipped else text


def report_json(report: SuiteReport) -> dict[str, Any]:
    """The same as the table, as one JSON-serializable document."""
    return {
        "source": report.source,
        "destination": report.destination,
        "results": [
            {
                "name": r.name,
                "result": r.outcome.value,
                "duration": round(r.duration, 3),
                "detail": r.detail,
            }
            for r in report.results
        ],
        "summary": {
            "passed": report.count(Outcome.PASSED),
            "failed": report.count(Outcome.FAILED),
            "skipped": report.count(Outcome.SKIPPED),
        },
        "cleanup_errors": list(report.cleanup_errors),
    }


def exit_code(report: SuiteReport) -> int:
    """0 when nothing failed and everything was cleaned up; 1 otherwise."""
    return 1 if report.count(Outcome.FAILED) or report.cleanup_errors else 0
