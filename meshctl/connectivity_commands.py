"""``meshctl connectivity test --multi-cluster``: run the suite and print the table or JSON.

Flow: options -> the driver: the local lab (``meshctl.lab.LabDriver(name, config_path)``, which
resolves each cell's context for the suite), or with ``--kube-context A
--destination-kube-context B`` (or ``--driver kubernetes``) the Kubernetes driver
(``meshctl.kube.driver.KubeDriver``: Pods, EndpointSlices and Services through each cell's API
server) with the pod runtime of the lab those contexts belong to (``meshctl lab up --source
kubernetes``; exec into real clusters' pods is not supported yet, and that is said, exit 1) ->
``choose_cells`` (``--context`` / ``--destination-context`` or the kube contexts, else the root
``--context``, else the driver's first two cells) -> ``run_suite`` -> the Kubernetes driver
removes what it made (its namespace) -> ``format_table`` or ``report_json`` on stdout,
progress on stderr -> exit 0, or 1 when a test failed or cleanup left something behind; bad
options exit 2. Never a traceback. The CLI sits above the suite: it imports ``e2e`` and hands it
the driver; ``e2e`` never imports ``meshctl``.
"""

from __future__ import annotations

import dataclasses
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
from meshctl.kube.driver import KubeDriver
from meshctl.lab import LabDriver
from meshctl.lab.kuberuntime import LabPodRuntime, find_lab_for_context
from meshctl.lab.state import StateError
from meshctl.output import format_table as format_rows
from meshctl.output import output_option

__all__ = [
    "DEFAULT_LAB",
    "connectivity_group",
    "format_table",
    "make_kube_driver",
    "make_lab_driver",
]

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


def make_kube_driver(lab: str | None, contexts: tuple[str, ...], config_path: Path) -> KubeDriver:
    """The Kubernetes driver over the lab the kube contexts belong to (or lab ``lab``).

    A pod runtime (make pods, exec in them) exists only for labs brought up with ``--source
    kubernetes``; for other clusters this says so (ClickException, exit 1).
    """
    if contexts:
        labs = {ctx: find_lab_for_context(ctx) for ctx in contexts}
        outside = [ctx for ctx, found in labs.items() if found is None]
        if outside:
            raise click.ClickException(
                f"kube context(s) {', '.join(map(repr, outside))} belong to no lab brought up "
                "with 'meshctl lab up --source kubernetes': running the suite in real clusters "
                "(creating pods and exec-ing the client in them) is not supported yet -- "
                "verify such cells with 'meshctl status --kube-context CTX --wait' instead"
            )
        found = set(labs.values())
        if len(found) != 1:
            shown = ", ".join(f"{ctx} (lab {lab_name})" for ctx, lab_name in labs.items())
            raise click.ClickException(f"the kube contexts belong to different labs: {shown}")
        lab = found.pop()
    assert lab is not None
    try:
        runtime = LabPodRuntime(lab, config_path)
    except StateError as e:
        raise click.ClickException(f"lab {lab!r}: {e}") from e
    return KubeDriver(runtime, config_path=config_path)


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
@click.option(
    "--kube-context",
    "kube_source",
    metavar="NAME",
    help="Cell A by kube context: run the suite through the Kubernetes driver.",
)
@click.option(
    "--destination-kube-context",
    "kube_destination",
    metavar="NAME",
    help="Cell B by kube context (Kubernetes driver).",
)
@click.option("--include-disruptive", is_flag=True, help="Also stop meshapis and restart agents.")
@output_option()
@click.option("--lab", "lab", default=DEFAULT_LAB, show_default=True, help="The lab to test.")
@click.option(
    "--driver",
    "driver_kind",
    type=click.Choice(["lab", "kubernetes"]),
    default=None,
    help="What runs the mesh [default: kubernetes with --kube-context, else lab]. kubernetes: "
    "Pods, EndpointSlices and Services through each cell's API server (the lab's pod runtime).",
)
@click.option("--list", "list_only", is_flag=True, help="List the tests and exit.")
@click.pass_context
def test_command(
    click_ctx: click.Context,
    multi_cluster: bool,
    source: str | None,
    destination: str | None,
    patterns: tuple[str, ...],
    kube_source: str | None,
    kube_destination: str | None,
    include_disruptive: bool,
    output: str,
    lab: str,
    driver_kind: str | None,
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
    kube_contexts = tuple(c for c in (kube_source, kube_destination) if c is not None)
    if kube_contexts and driver_kind == "lab":
        raise click.UsageError("--kube-context needs the Kubernetes driver, not --driver lab")
    if kube_contexts and (source or destination):
        raise click.UsageError(
            "pass --kube-context / --destination-kube-context or --context / "
            "--destination-context, not both"
        )
    kubernetes = driver_kind == "kubernetes" or bool(kube_contexts)
    options = SuiteOptions(patterns=patterns, include_disruptive=include_disruptive)
    selection = _selection(click_ctx)
    try:
        select_tests(suite.TESTS, patterns)  # a pattern that selects nothing: before the lab
    except SuiteError as e:
        raise click.UsageError(str(e)) from e
    kube_driver = (
        make_kube_driver(lab, kube_contexts, selection.config_path) if kubernetes else None
    )
    driver = kube_driver or make_lab_driver(lab, selection.config_path)
    if kube_driver is not None:
        source, destination = kube_source or source, kube_destination or destination
    try:
        cells = choose_cells(driver, source or selection.context_name, destination)
    except SuiteError as e:
        if kube_driver is not None:
            kube_driver.close()
        raise click.UsageError(str(e)) from e

    def started(case: TestCase) -> None:
        if output == "table":
            click.echo(f"running {case.name} ...", err=True)

    def finished(result: TestResult) -> None:
        if output == "table" and result.outcome is not Outcome.SKIPPED:
            took = format_duration(result.duration)
            click.echo(f"  {result.outcome.value} ({took})", err=True)

    if kube_driver is None:
        report = run_suite(
            driver, cells, options, tests=suite.TESTS, on_start=started, on_result=finished
        )
    else:
        try:
            report = run_suite(
                kube_driver, cells, options, tests=suite.TESTS,
                admin=kube_driver.service_admin(), on_start=started, on_result=finished,
            )  # fmt: skip
        finally:
            leftovers = kube_driver.close()  # its namespace in every cell, and any pod left
        report = dataclasses.replace(report, cleanup_errors=(*report.cleanup_errors, *leftovers))
    if output == "json":
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        click.echo(format_table(report))
    click_ctx.exit(exit_code(report))
