"""The suite's runner: selection, cells, outcomes, cleanup -- and every test against a simulated
mesh (``tests.e2e.simulated``), healthy and with one bug at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from e2e.checks import SuiteConfig, TestContext
from e2e.driver import ExecResult, Pod
from e2e.environment import NAMESPACE, Environment, ServiceSpec, service_manifest
from e2e.probe import CheckFailed, Observation, ProbeError, Prober, wait_until
from e2e.report import Outcome
from e2e.suite import TESTS, SuiteError, SuiteOptions, TestCase, choose_cells, matches, run_suite
from e2e.suite import select_tests as select
from meshcore.model import Affinity, load_manifests, service_from_manifest
from tests.e2e.conftest import FakeAdmin, FakeDriver
from tests.e2e.simulated import SimulatedAdmin, SimulatedMesh

FAST = SuiteConfig(
    wait_timeout=0.3, poll_interval=0.01, requests=6, hold_rounds=2, outage=0.05, client_loop=0.4
)

# --- selection and cells --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "selected"),
    [
        pytest.param("affinity", ["affinity/local", "affinity/remote", "affinity/none"], id="sub"),
        pytest.param(
            "pod-to-pod/*",
            ["pod-to-pod/cross-cell/tcp", "pod-to-pod/cross-cell/udp", "pod-to-pod/same-cell"],
            id="glob",
        ),
        pytest.param("*/udp", ["pod-to-pod/cross-cell/udp", "global-service/udp"], id="glob-end"),
        pytest.param("affinity/[lr]*", ["affinity/local", "affinity/remote"], id="glob-class"),
        pytest.param(
            "restart",
            ["disruptive/remote-meshapi-restart", "disruptive/agent-restart"],
            id="sub-disruptive",
        ),
    ],
)
def test_select_by_glob_or_substring(pattern: str, selected: list[str]) -> None:
    assert [t.name for t in select(TESTS, [pattern])] == selected


def test_several_patterns_keep_the_suite_order() -> None:
    names = [t.name for t in select(TESTS, ["non-global", "pod-to-pod/same-cell"])]
    assert names == ["pod-to-pod/same-cell", "non-global/stays-local"]
    assert select(TESTS, []) == list(TESTS)
    assert matches("affinity/local", "local")
    assert not matches("affinity/local", "local*")  # a glob matches the whole name


def test_a_pattern_that_matches_nothing_is_an_error() -> None:
    with pytest.raises(SuiteError, match=r"no test matches 'nope' \(tests: pod-to-pod/cross"):
        select(TESTS, ["affinity", "nope"])


def test_every_test_has_a_unique_name() -> None:
    names = [t.name for t in TESTS]
    assert len(set(names)) == len(names) == 13
    assert {t.name for t in TESTS if t.disruptive} == {
        "disruptive/remote-meshapi-down",
        "disruptive/remote-meshapi-restart",
        "disruptive/agent-restart",
    }


def test_cells_default_to_the_first_two_and_accept_context_names() -> None:
    driver = FakeDriver(topology={"alpha": ["a1"], "beta": ["b1"], "gamma": ["c1"]})
    assert choose_cells(driver, None, None) == ("alpha", "beta")
    assert choose_cells(driver, "lab-gamma", None) == ("gamma", "alpha")
    assert choose_cells(driver, None, "alpha") == ("beta", "alpha")
    assert choose_cells(driver, "beta", "lab-gamma") == ("beta", "gamma")
    with pytest.raises(SuiteError, match="are the same cell"):
        choose_cells(driver, "alpha", "lab-alpha")
    with pytest.raises(SuiteError, match=r"--destination-context 'delta' is neither a cell"):
        choose_cells(driver, None, "delta")
    with pytest.raises(SuiteError, match="needs two cells; the mesh has 1: alpha"):
        choose_cells(FakeDriver(topology={"alpha": ["a1"]}), None, None)


# --- the runner -----------------------------------------------------------------------------


def passing(t: TestContext) -> str:
    t.env.service("svc", {t.a: ServiceSpec(), t.b: ServiceSpec()})
    t.env.backend(t.b, "svc-b", "svc")
    t.env.client(t.a)
    return "fine"


def failing(t: TestContext) -> str:
    t.env.backend(t.a, "bad-a", "svc")
    raise CheckFailed("expected x; saw y; likely cause: z")


def crashing(t: TestContext) -> str:
    raise RuntimeError("boom")


CASES = (
    TestCase("x/pass", passing),
    TestCase("x/fail", failing),
    TestCase("x/crash", crashing),
    TestCase("x/disruptive", passing, disruptive=True),
)


def test_outcomes_and_cleanup_after_each_test() -> None:
    driver, admin = FakeDriver(), FakeAdmin()
    started: list[str] = []
    report = run_suite(
        driver,
        ("alpha", "beta"),
        SuiteOptions(config=FAST),
        tests=CASES,
        admin=admin,
        on_start=lambda case: started.append(case.name),
    )
    got = [(r.name, r.outcome, r.detail) for r in report.results]
    assert got == [
        ("x/pass", Outcome.PASSED, "fine"),
        ("x/fail", Outcome.FAILED, "expected x; saw y; likely cause: z"),
        ("x/crash", Outcome.FAILED, "unexpected error: RuntimeError: boom"),
        ("x/disruptive", Outcome.SKIPPED, "disruptive: pass --include-disruptive"),
    ]
    assert started == ["x/pass", "x/fail", "x/crash"]
    # Test-scoped pods go after their test, the client pod after the suite.
    assert driver.calls == [
        "add beta/svc-b",
        "add alpha/client-0",
        "delete beta/svc-b",
        "add alpha/bad-a",
        "delete alpha/bad-a",
        "delete alpha/client-0",
    ]
    assert [cell for cell, _ in admin.applied] == ["alpha", "beta"]
    assert [cell for cell, _ in admin.deleted] == ["beta", "alpha"]
    assert driver.pods == {}
    assert report.cleanup_errors == ()


def test_disruptive_tests_run_when_asked() -> None:
    report = run_suite(
        FakeDriver(),
        ("alpha", "beta"),
        SuiteOptions(patterns=("disruptive",), include_disruptive=True, config=FAST),
        tests=CASES,
        admin=FakeAdmin(),
    )
    assert [(r.name, r.outcome) for r in report.results] == [("x/disruptive", Outcome.PASSED)]


def test_cleanup_errors_are_collected_not_raised() -> None:
    class FailingDelete(FakeDriver):
        def delete_pod(self, cell: str, node: str, name: str) -> None:
            if (cell, name) in self.pods:
                raise RuntimeError(f"{name} is stuck")

    report = run_suite(
        FailingDelete(),
        ("alpha", "beta"),
        SuiteOptions(patterns=("x/pass",), config=FAST),
        tests=CASES,
        admin=FakeAdmin(),
    )
    assert report.results[0].outcome is Outcome.PASSED
    assert report.cleanup_errors == (
        "x/pass: delete pod beta/b1/svc-b: svc-b is stuck",
        "delete pod alpha/a1/client-0: client-0 is stuck",
    )


def test_an_interrupt_still_cleans_up() -> None:
    def interrupted(t: TestContext) -> str:
        t.env.client(t.a)
        raise KeyboardInterrupt

    driver = FakeDriver()
    with pytest.raises(KeyboardInterrupt):
        run_suite(
            driver,
            ("alpha", "beta"),
            SuiteOptions(config=FAST),
            tests=[TestCase("x/interrupted", interrupted)],
            admin=FakeAdmin(),
        )
    assert driver.calls == ["add alpha/client-0", "delete alpha/client-0"]


# --- the environment, probes, waits ---------------------------------------------------------


def test_services_get_distinct_vips_per_cell_and_the_right_annotations() -> None:
    admin = FakeAdmin()
    env = Environment(FakeDriver(), admin, "alpha", "beta")
    first = env.service("one", {"alpha": ServiceSpec(shared=False), "beta": ServiceSpec()})
    second = env.service("two", {"alpha": ServiceSpec(global_=False, affinity="local")})
    assert first == {"alpha": "10.96.240.10", "beta": "10.96.241.10"}
    assert second == {"alpha": "10.96.240.11"}
    records = [
        service_from_manifest(load_manifests(text, source="t")[0], cell=cell)
        for cell, text in admin.applied
    ]
    assert [(r.cell, r.namespace, r.name, r.global_, r.shared, r.affinity) for r in records] == [
        ("alpha", NAMESPACE, "one", True, False, Affinity.NONE),
        ("beta", NAMESPACE, "one", True, True, Affinity.NONE),
        ("alpha", NAMESPACE, "two", False, False, Affinity.NONE),
    ]
    assert [(f.name, f.port, f.protocol) for f in records[0].frontends] == [
        ("http", 80, "TCP"),
        ("udp", 80, "UDP"),
    ]
    assert env.end_test() == []
    assert len(admin.deleted) == 3
    assert "annotations" in service_manifest("x", "10.96.240.1")


def test_probe_errors_are_readable() -> None:
    class NoModule(FakeDriver):
        def exec(
            self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
        ) -> ExecResult:
            return ExecResult(1, "", "Traceback...\nModuleNotFoundError: No module named 'e2e'\n")

    class Garbage(FakeDriver):
        def exec(
            self, cell: str, node: str, pod: str, argv: Sequence[str], *, timeout: float = 30.0
        ) -> ExecResult:
            return ExecResult(0, "hello\n", "")

    pod = Pod("alpha", "a1", "c", "10.1.0.2")
    with pytest.raises(
        ProbeError,
        match=r"the client failed in pod alpha/a1/c \(exit 1\): "
        r"ModuleNotFoundError: No module named 'e2e' -- can the driver's python",
    ):
        Prober(NoModule()).probe(pod, "tcp", "10.96.240.10", 80)
    with pytest.raises(ProbeError, match=r"the client in pod alpha/a1/c printed 'hello', not"):
        Prober(Garbage()).probe(pod, "tcp", "10.96.240.10", 80)


def test_observations_add_up_and_describe_themselves() -> None:
    one = Observation.from_json('{"replies": {"alpha a1 p": 2}, "failures": 0, "errors": {}}')
    two = Observation.from_json(
        '{"replies": {"beta b1 q": 1}, "failures": 1, "errors": {"connect: timed out": 1}}'
    )
    both = one + two
    assert both.cells() == {"alpha", "beta"}
    assert not both.only_from("alpha")
    assert one.only_from("alpha")
    assert both.describe() == (
        "4 attempts: 2 from alpha/a1/p, 1 from beta/b1/q, 1 failed (connect: timed out x1)"
    )


def test_wait_until_polls_with_a_deadline() -> None:
    now = [0.0]
    seen: list[int] = []

    def observe() -> int:
        seen.append(len(seen))
        return seen[-1]

    def sleep(s: float) -> None:
        now[0] += s

    ok = wait_until(
        observe, lambda n: n == 3, timeout=10, interval=1, clock=lambda: now[0], sleep=sleep
    )
    assert (ok.ok, ok.last, ok.elapsed) == (True, 3, 3.0)
    seen.clear()
    now[0] = 0.0
    missed = wait_until(
        observe, lambda n: n < 0, timeout=2.5, interval=1, clock=lambda: now[0], sleep=sleep
    )
    assert (missed.ok, missed.last) == (False, 3)


# --- the real tests on a simulated mesh -----------------------------------------------------


def simulate(faults: set[str], patterns: tuple[str, ...] = ()) -> tuple[SimulatedMesh, Any]:
    mesh = SimulatedMesh(faults=faults)
    report = run_suite(
        mesh,
        ("alpha", "beta"),
        SuiteOptions(patterns=patterns, include_disruptive=True, config=FAST),
        admin=SimulatedAdmin(mesh),
    )
    return mesh, {r.name: r for r in report.results}


def test_every_test_passes_on_a_healthy_mesh_and_cleans_up() -> None:
    mesh, results = simulate(set())
    failed = {n: r.detail for n, r in results.items() if r.outcome is not Outcome.PASSED}
    assert failed == {}
    assert len(results) == len(TESTS)
    assert mesh.pods == {}
    assert mesh.services == {}
    assert mesh.meshapi_down == set()
    assert "restart-agent alpha/a1" in mesh.calls
    assert "pod p2p-local" not in str(results["pod-to-pod/same-cell"].detail)
    assert "alpha/a2/p2p-local" in results["pod-to-pod/same-cell"].detail


def test_affinity_ignored_fails_with_the_cause() -> None:
    _, results = simulate({"ignore-affinity"}, ("affinity",))
    assert results["affinity/none"].outcome is Outcome.PASSED
    local = results["affinity/local"]
    assert local.outcome is Outcome.FAILED
    assert "expected only 'alpha''s backend (affinity local, one is ready)" in local.detail
    assert "likely cause: 'beta''s backend still answers: affinity local is not applied" in (
        local.detail
    )
    assert results["affinity/remote"].outcome is Outcome.FAILED


def test_an_exported_unshared_service_fails_shared_false() -> None:
    _, results = simulate({"leak-unshared"}, ("shared-false",))
    detail = results["shared-false/active-passive"].detail
    assert results["shared-false/active-passive"].outcome is Outcome.FAILED
    assert "expected only 'beta''s backend from 'beta'" in detail
    assert "likely cause: 'alpha''s backend answers in 'beta'" in detail


def test_one_node_cells_test_same_cell_on_the_same_node() -> None:
    mesh = SimulatedMesh(topology={"alpha": ["a1"], "beta": ["b1"]})
    report = run_suite(
        mesh,
        ("alpha", "beta"),
        SuiteOptions(patterns=("same-cell",), config=FAST),
        admin=SimulatedAdmin(mesh),
    )
    [result] = report.results
    assert result.outcome is Outcome.PASSED
    assert result.detail.endswith("(cell 'alpha' has one node: tested on the same node)")


def test_nothing_answers_explains_the_datapath() -> None:
    class Dark(SimulatedMesh):
        def _answer(self, cell: str, protocol: str, host: str, port: int) -> list[Pod]:
            return []

    mesh = Dark()
    report = run_suite(
        mesh,
        ("alpha", "beta"),
        SuiteOptions(patterns=("both-cells", "cross-cell/tcp"), config=FAST),
        admin=SimulatedAdmin(mesh),
    )
    details = {r.name: r.detail for r in report.results}
    assert (
        "no reply from the VIP (connection refused): is the socket LB attached"
        in (details["global-service/both-cells"])
    )
    assert (
        "no reply from the pod (connection refused): is it running"
        in (details["pod-to-pod/cross-cell/tcp"])
    )
    assert mesh.pods == {}
