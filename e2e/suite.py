"""The multi-cluster connectivity suite: the named tests and the runner.

Flow: ``choose_cells`` picks cells A (clients) and B from the driver and the context options ->
``select_tests`` keeps the tests whose name matches a ``--test`` pattern (glob, else substring)
-> ``run_suite`` runs them in order against the ``MeshDriver``: each gets a ``TestContext``;
disruptive ones are skipped (with the reason) unless asked for; a ``CheckFailed`` is a failure
with its detail, any other exception a failure naming it (never a traceback); after each test
its services and pods are removed, after the suite the client pods -- also on failure and on
Ctrl-C -> a ``SuiteReport`` (``e2e.report``) for the table or JSON.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from e2e import cases, disruptive
from e2e.checks import SuiteConfig, TestContext
from e2e.driver import MeshDriver
from e2e.environment import AdminError, Environment, MeshAdmin, ServiceAdmin
from e2e.probe import CheckFailed, Prober
from e2e.report import Outcome, SuiteReport, TestResult

__all__ = [
    "TESTS",
    "SuiteError",
    "SuiteOptions",
    "TestCase",
    "choose_cells",
    "matches",
    "run_suite",
    "select_tests",
]


class SuiteError(Exception):
    """The suite cannot start (cells, patterns); the message says what to change."""


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest test class

    name: str
    run: Callable[[TestContext], str]  # returns the detail on success, raises CheckFailed
    disruptive: bool = False


TESTS: tuple[TestCase, ...] = (
    *(TestCase(name, run) for name, run in cases.CASES),
    *(TestCase(name, run, disruptive=True) for name, run in disruptive.CASES),
)


@dataclass(frozen=True)
class SuiteOptions:
    patterns: tuple[str, ...] = ()
    include_disruptive: bool = False
    config: SuiteConfig = field(default_factory=SuiteConfig)


def matches(name: str, pattern: str) -> bool:
    """A glob when ``pattern`` has ``*?[``, else a substring of ``name``."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def select_tests(tests: Sequence[TestCase], patterns: Sequence[str]) -> list[TestCase]:
    """The tests matching any pattern (all without patterns); SuiteError if a pattern matches
    nothing."""
    if not patterns:
        return list(tests)
    unmatched = [p for p in patterns if not any(matches(t.name, p) for t in tests)]
    if unmatched:
        names = ", ".join(t.name for t in tests)
        raise SuiteError(
            f"no test matches {', '.join(repr(p) for p in unmatched)} (tests: {names})"
        )
    return [t for t in tests if any(matches(t.name, p) for p in patterns)]


def _cell_of(driver: MeshDriver, name: str, option: str) -> str:
    """The cell named ``name``, or whose context is ``name``."""
    cells = driver.cells()
    if name in cells:
        return name
    for cell in cells:
        if driver.context(cell) == name:
            return cell
    known = ", ".join(f"{c} (context {driver.context(c)})" for c in cells)
    raise SuiteError(f"{option} {name!r} is neither a cell nor a cell's context (cells: {known})")


def choose_cells(
    driver: MeshDriver, source: str | None, destination: str | None
) -> tuple[str, str]:
    """Cells A and B: the ones named (by cell or context name), else the driver's first two."""
    cells = driver.cells()
    if len(cells) < 2:
        raise SuiteError(
            f"the multi-cluster suite needs two cells; the mesh has {len(cells)}: "
            f"{', '.join(cells) or 'none'}"
        )
    a = _cell_of(driver, source, "--context") if source else None
    b = _cell_of(driver, destination, "--destination-context") if destination else None
    if a is None:
        a = next(c for c in cells if c != b)
    if b is None:
        b = next(c for c in cells if c != a)
    if a == b:
        raise SuiteError(f"--context and --destination-context are the same cell ({a!r})")
    return a, b


def _run_one(case: TestCase, ctx: TestContext) -> tuple[Outcome, str]:
    try:
        return Outcome.PASSED, case.run(ctx)
    except CheckFailed as e:
        return Outcome.FAILED, str(e)
    except AdminError as e:
        return Outcome.FAILED, f"meshapi admin call failed: {e}"
    except Exception as e:  # a driver or library error: name it, never a traceback
        return Outcome.FAILED, f"unexpected error: {type(e).__name__}: {e}"


def run_suite(
    driver: MeshDriver,
    cells: tuple[str, str],
    options: SuiteOptions,
    *,
    tests: Iterable[TestCase] = TESTS,
    admin: ServiceAdmin | None = None,
    on_start: Callable[[TestCase], None] | None = None,
    on_result: Callable[[TestResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SuiteReport:
    """Run the selected ``tests`` with clients in ``cells[0]``; everything made is removed."""
    selected = select_tests(list(tests), options.patterns)
    env = Environment(driver, admin or MeshAdmin(driver), *cells)
    ctx = TestContext(driver, env, Prober(driver, options.config.attempt_timeout), options.config)
    results: list[TestResult] = []
    cleanup_errors: list[str] = []
    try:
        for case in selected:
            if case.disruptive and not options.include_disruptive:
                result = TestResult(
                    case.name, Outcome.SKIPPED, 0.0, "disruptive: pass --include-disruptive"
                )
            else:
                if on_start is not None:
                    on_start(case)
                start = clock()
                try:
                    outcome, detail = _run_one(case, ctx)
                finally:
                    errors = env.end_test()
                cleanup_errors += [f"{case.name}: {e}" for e in errors]
                result = TestResult(case.name, outcome, clock() - start, detail)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        cleanup_errors += env.end_suite()
    return SuiteReport(cells[0], cells[1], tuple(results), tuple(cleanup_errors))
