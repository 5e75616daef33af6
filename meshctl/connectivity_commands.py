"""``meshctl connectivity test --multi-cluster``: run the suite and print the table or JSON.

Flow: options -> the driver (the local lab: ``meshctl.lab.LabDriver(name, config_path)``, which
resolves each cell's context for the suite; a Kubernetes driver is future work) ->
``choose_cells`` (``--context`` / ``--destination-context``, else the root ``--context``, else
the driver's first two cells) -> ``run_suite`` -> ``format_table`` or ``report_json`` on stdout,
progress on stderr -> exit 0, or 1 when a test failed or cleanup left something behind; bad
options exit 2. Never a traceback. The CLI sits above the suite: it imports ``e2e`` and hands it
the driver; ``e2e`` never imports ``meshctl``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from e2e import suite
from e2e.driver import MeshDriver
from e2e.report import (
    Outcome,
    SuiteReport,
    TestResult,
    exit_code,
    format_duration,
    report_json,
    summary_line,
)
from e2e.suite import SuiteError, SuiteOptions, TestCase, choose_cells, run_suite, select_tests
from meshctl.contexts import DEFAULT_CONFIG_PATH, ContextSelection
from meshctl.lab import LabDriver
from meshctl.output import format_table as format_rows
from meshctl.output import output_option

__all__ = ["DEFAULT_LAB", "connectivity_group", "format_table", "make_lab_driver"]

DEFAULT_LAB = "lab"


def _selection(click_ctx: click.Context) -> ContextSelection:
    root = click_ctx.find_root().obj
    if isinstance(root, ContextSelection):
        return root
    return ContextSelection(DEFAULT_CONFIG_PATH.expanduser(), None)


def make_lab_driver(name: str, config_path: Path) -> MeshDriver:
    """The local lab's driver; ClickException when the lab is not there."""
    try:
        driver: MeshDriver = LabDriver(name, config_path)
    except Exception as e:  # the lab's own errors say what is missing
        raise click.ClickException(f"lab {name!r}: {e} (is it up? `meshctl lab up`)") from e
    return driver


def format_table(report: SuiteReport) -> str:
    """The TEST / RESULT / DURATION / DETAIL table, cleanup problems, then the summary line."""
    rows = [
        (
            r.name,
            r.outcome.value,
            "-" if r.outcome is Outcome.SKIPPED else format_duration(r.duration),
            " ".join(r.detail.split()),  # one row per test, whatever the detail holds
        )
        for r in report.results
    ]
    lines = [
        f"Connectivity test: clients in cell {report.source!r}, "
        f"destination cell {report.destination!r}",
        "",
        format_rows(("TEST", "RESULT", "DURATION", "DETAIL"), rows),
        "",
    ]
    lines += [f"cleanup: {error}" for error in report.cleanup_errors]
    lines.append(summary_line(report))
    return "\n".join(lines)


@click.group("connectivity")
def connectivity_group() -> None:
    """Check that the mesh carries traffic: pods, global services, affinity."""


@connectivity_group.command("test")
@click.option(
    "--multi-cluster",
    is_flag=True,
    help="Test across two cells (required: single-cluster mode is not implemented).",
)
@click.option(
    "--context",
    "source",
    metavar="NAME",
    help="Cell A, where the clients run (cell or context name) [default: the root --context, "
    "else the first cell].",
)
@click.option(
    "--destination-context",
    "destination",
    metavar="NAME",
    help="Cell B (cell or context name) [default: the first other cell].",
)
@click.option(
    "--test",
    "patterns",
    multiple=True,
    metavar="PATTERN",
    help="Run only tests whose name matches (glob, or substring); repeatable.",
)
@click.option("--include-disruptive", is_flag=True, help="Also stop meshapis and restart agents.")
@output_option()
@click.option("--lab", "lab", default=DEFAULT_LAB, show_default=True, help="The lab to test.")
@click.option(
    "--driver",
    "driver_kind",
    type=click.Choice(["lab", "kubernetes"]),
    default="lab",
    show_default=True,
    help="What runs the mesh.",
)
@click.option("--list", "list_only", is_flag=True, help="List the tests and exit.")
@click.pass_context
def test_command(
    click_ctx: click.Context,
    multi_cluster: bool,
    source: str | None,
    destination: str | None,
    patterns: tuple[str, ...],
    include_disruptive: bool,
    output: str,
    lab: str,
    driver_kind: str,
    list_only: bool,
) -> None:
    """Run the connectivity suite against two cells of the mesh."""
    if list_only:
        for case in suite.TESTS:
            click.echo(f"{case.name}{'  (disruptive)' if case.disruptive else ''}")
        return
    if not multi_cluster:
        raise click.UsageError(
            "only the multi-cluster suite exists: pass --multi-cluster "
            "(single-cluster mode is not implemented)"
        )
    if driver_kind == "kubernetes":
        raise click.UsageError(
            "the Kubernetes driver (a kube context per cell) is future work; "
            "run the suite against the local lab: --driver lab --lab NAME"
        )
    options = SuiteOptions(patterns=patterns, include_disruptive=include_disruptive)
    selection = _selection(click_ctx)
    try:
        select_tests(suite.TESTS, patterns)  # a pattern that selects nothing: before the lab
    except SuiteError as e:
        raise click.UsageError(str(e)) from e
    driver = make_lab_driver(lab, selection.config_path)
    try:
        cells = choose_cells(driver, source or selection.context_name, destination)
    except SuiteError as e:
        raise click.UsageError(str(e)) from e

    def started(case: TestCase) -> None:
        if output == "table":
            click.echo(f"running {case.name} ...", err=True)

    def finished(result: TestResult) -> None:
        if output == "table" and result.outcome is not Outcome.SKIPPED:
            took = format_duration(result.duration)
            click.echo(f"  {result.outcome.value} ({took})", err=True)

    report = run_suite(
        driver, cells, options, tests=suite.TESTS, on_start=started, on_result=finished
    )
    if output == "json":
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        click.echo(format_table(report))
    click_ctx.exit(exit_code(report))
