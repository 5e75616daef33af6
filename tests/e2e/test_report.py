"""Report formatting: the table, the summary line, the JSON document, the exit code."""

from __future__ import annotations

import json

import pytest

from e2e.report import (
    Outcome,
    SuiteReport,
    TestResult,
    exit_code,
    format_duration,
    report_json,
    summary_line,
)
from meshctl.connectivity_commands import format_table

RESULTS = (
    TestResult("pod-to-pod/cross-cell/tcp", Outcome.PASSED, 1.234, "20 attempts: 20 from b"),
    TestResult(
        "affinity/local",
        Outcome.FAILED,
        16.0,
        "expected only 'alpha'\nsaw 20 attempts: 20 from beta/b1/x",
    ),
    TestResult(
        "disruptive/agent-restart", Outcome.SKIPPED, 0.0, "disruptive: pass --include-disruptive"
    ),
)


def test_table_has_a_row_per_test_and_the_summary() -> None:
    text = format_table(SuiteReport("alpha", "beta", RESULTS))
    lines = text.splitlines()
    assert lines[0] == "Connectivity test: clients in cell 'alpha', destination cell 'beta'"
    header = lines[2]
    assert header.split() == ["TEST", "RESULT", "DURATION", "DETAIL"]
    rows = lines[3:6]
    assert rows[0].split()[:3] == ["pod-to-pod/cross-cell/tcp", "passed", "1.2s"]
    # A detail spanning lines stays on its row.
    assert rows[1].split()[:3] == ["affinity/local", "failed", "16.0s"]
    assert rows[1].endswith("expected only 'alpha' saw 20 attempts: 20 from beta/b1/x")
    assert rows[2].split()[:3] == ["disruptive/agent-restart", "skipped", "-"]
    assert rows[2].endswith("disruptive: pass --include-disruptive")
    # Columns line up under the header.
    assert {row.index(row.split()[1]) for row in rows} == {header.index("RESULT")}
    assert lines[-1] == "1 passed, 1 failed, 1 skipped"


@pytest.mark.parametrize(
    ("outcomes", "line", "code"),
    [
        pytest.param([Outcome.PASSED] * 3, "3 passed, 0 failed", 0, id="all-passed"),
        pytest.param([Outcome.PASSED, Outcome.FAILED], "1 passed, 1 failed", 1, id="one-failed"),
        pytest.param([Outcome.SKIPPED], "0 passed, 0 failed, 1 skipped", 0, id="only-skipped"),
        pytest.param([], "0 passed, 0 failed", 0, id="nothing"),
    ],
)
def test_summary_and_exit_code(outcomes: list[Outcome], line: str, code: int) -> None:
    report = SuiteReport(
        "a", "b", tuple(TestResult(f"t{i}", o, 1.0) for i, o in enumerate(outcomes))
    )
    assert summary_line(report) == line
    assert exit_code(report) == code


def test_a_cleanup_error_fails_the_run_and_is_shown() -> None:
    report = SuiteReport("a", "b", RESULTS[:1], ("affinity/local: delete pod alpha/a1/x: gone",))
    assert exit_code(report) == 1
    assert "cleanup: affinity/local: delete pod alpha/a1/x: gone" in format_table(report)


def test_json_document() -> None:
    report = SuiteReport("alpha", "beta", RESULTS)
    doc = json.loads(json.dumps(report_json(report)))
    assert doc == {
        "source": "alpha",
        "destination": "beta",
        "results": [
            {
                "name": "pod-to-pod/cross-cell/tcp",
                "result": "passed",
                "duration": 1.234,
                "detail": "20 attempts: 20 from b",
            },
            {
                "name": "affinity/local",
                "result": "failed",
                "duration": 16.0,
                "detail": "expected only 'alpha'\nsaw 20 attempts: 20 from beta/b1/x",
            },
            {
                "name": "disruptive/agent-restart",
                "result": "skipped",
                "duration": 0.0,
                "detail": "disruptive: pass --include-disruptive",
            },
        ],
        "summary": {"passed": 1, "failed": 1, "skipped": 1},
        "cleanup_errors": [],
    }


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.04, "0.0s"), (12.345, "12.3s"), (61.0, "1m01s"), (600, "10m00s")]
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
