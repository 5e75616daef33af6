"""The connectivity suite against a real lab: 2 cells x 2 nodes, connected with ``meshctl connect``.

First the runner's own behaviour on the lab (cells, services, cleanup, errors, exit codes and
formats of ``meshctl connectivity test``), then the whole suite -- the disruptive tests included
-- which must pass, and last a deliberately broken datapath (the socket LB's links of the client
node detached with ``bpftool link detach``), which must fail with a reason an operator can act
on. The broken datapath is not repaired: it is the module's last test and the lab goes with it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import e2e.suite
import meshctl.connectivity_commands
from e2e.checks import SuiteConfig, TestContext
from e2e.driver import Pod, PodSpec
from e2e.environment import NAMESPACE, Environment, MeshAdmin, ServiceSpec
from e2e.probe import CheckFailed, ProbeError, Prober
from e2e.report import Outcome
from e2e.suite import TESTS, SuiteError, SuiteOptions, TestCase, choose_cells, run_suite
from meshcore.model import Affinity
from meshctl.lab import LabDriver
from tests.lab.conftest import Lab, connected_lab

FAST = SuiteConfig(wait_timeout=20.0, requests=6, hold_rounds=2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab with one pod per node, its cells joined the way an operator joins them."""
    with connected_lab(tmp_path_factory.mktemp("connectivity")) as made:
        ready = made.meshctl("status", "--context", f"{made.name}-alpha", "--wait")
        assert ready.returncode == 0, ready.stdout + ready.stderr
        yield made


@pytest.fixture
def driver(lab: Lab) -> LabDriver:
    return LabDriver(lab.name, lab.config)


def pods_of(lab: Lab) -> list[str]:
    return [
        f"{cell['name']}/{node['name']}/{pod['name']}"
        for cell in lab.status()["cells"]
        for node in cell["nodes"]
        for pod in node["pods"]
    ]


ORIGINAL_PODS = [
    "alpha/node0/echo-0-0",
    "alpha/node1/echo-1-0",
    "beta/node0/echo-0-0",
    "beta/node1/echo-1-0",
]


class Recording:
    """The lab's driver, with its pod calls written down (and, on demand, a failing delete)."""

    def __init__(self, inner: LabDriver, stuck: Sequence[str] = ()) -> None:
        self.inner = inner
        self.stuck = set(stuck)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def add_pod(self, spec: PodSpec) -> Pod:
        self.calls.append(f"add {spec.cell}/{spec.name}")
        return self.inner.add_pod(spec)

    def delete_pod(self, cell: str, node: str, name: str) -> None:
        present = any(p.name == name for p in self.inner.state().node(cell, node).pods)
        if present and name in self.stuck:
            raise RuntimeError(f"{name} is stuck")
        if present:
            self.calls.append(f"delete {cell}/{name}")
        self.inner.delete_pod(cell, node, name)


# --- the runner on the lab ----------------------------------------------------------------


def test_cells_default_to_the_first_two_and_accept_context_names(
    lab: Lab, driver: LabDriver
) -> None:
    assert choose_cells(driver, None, None) == ("alpha", "beta")
    assert choose_cells(driver, f"{lab.name}-beta", None) == ("beta", "alpha")
    assert choose_cells(driver, None, "alpha") == ("beta", "alpha")
    with pytest.raises(SuiteError, match="are the same cell"):
        choose_cells(driver, "alpha", f"{lab.name}-alpha")
    with pytest.raises(SuiteError, match=r"--destination-context 'delta' is neither a cell"):
        choose_cells(driver, None, "delta")


def test_services_get_distinct_vips_per_cell_and_the_right_annotations(driver: LabDriver) -> None:
    admin = MeshAdmin(driver)
    env = Environment(driver, admin, "alpha", "beta")
    try:
        first = env.service("one", {"alpha": ServiceSpec(shared=False), "beta": ServiceSpec()})
        second = env.service("two", {"alpha": ServiceSpec(global_=False, affinity="local")})
        assert first == {"alpha": "10.96.240.10", "beta": "10.96.241.10"}
        assert second == {"alpha": "10.96.240.11"}
        records = sorted(
            (r for cell in ("alpha", "beta") for r in admin.services(cell)),
            key=lambda r: (r.name, r.cell),
        )
        assert [
            (r.cell, r.namespace, r.name, r.global_, r.shared, r.affinity) for r in records
        ] == [
            ("alpha", NAMESPACE, "one", True, False, Affinity.NONE),
            ("beta", NAMESPACE, "one", True, True, Affinity.NONE),
            ("alpha", NAMESPACE, "two", False, False, Affinity.NONE),
        ]
        assert [(f.name, f.port, f.protocol) for f in records[0].frontends] == [
            ("http", 80, "TCP"),
            ("udp", 80, "UDP"),
        ]
    finally:
        assert env.end_test() == []
    assert admin.services("alpha") == admin.services("beta") == []


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


def test_outcomes_and_cleanup_after_each_test(lab: Lab, driver: LabDriver) -> None:
    recording = Recording(driver)
    started: list[str] = []
    report = run_suite(
        recording,
        ("alpha", "beta"),
        SuiteOptions(config=FAST),
        tests=CASES,
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
    assert recording.calls == [
        "add beta/svc-b",
        "add alpha/client-0",
        "delete beta/svc-b",
        "add alpha/bad-a",
        "delete alpha/bad-a",
        "delete alpha/client-0",
    ]
    assert report.cleanup_errors == ()
    assert pods_of(lab) == ORIGINAL_PODS
    admin = MeshAdmin(driver)
    assert admin.services("alpha") == admin.services("beta") == []


def test_cleanup_errors_are_collected_not_raised(lab: Lab, driver: LabDriver) -> None:
    stuck = Recording(driver, stuck=("svc-b", "client-0"))
    try:
        report = run_suite(
            stuck,
            ("alpha", "beta"),
            SuiteOptions(patterns=("x/pass",), config=FAST),
            tests=CASES,
        )
        assert report.results[0].outcome is Outcome.PASSED
        assert report.cleanup_errors == (
            "x/pass: delete pod beta/node0/svc-b: svc-b is stuck",
            "delete pod alpha/node0/client-0: client-0 is stuck",
        )
    finally:
        driver.delete_pod("beta", "node0", "svc-b")
        driver.delete_pod("alpha", "node0", "client-0")
    assert pods_of(lab) == ORIGINAL_PODS


def test_an_interrupt_still_cleans_up(lab: Lab, driver: LabDriver) -> None:
    def interrupted(t: TestContext) -> str:
        t.env.client(t.a)
        raise KeyboardInterrupt

    recording = Recording(driver)
    with pytest.raises(KeyboardInterrupt):
        run_suite(
            recording,
            ("alpha", "beta"),
            SuiteOptions(config=FAST),
            tests=[TestCase("x/interrupted", interrupted)],
        )
    assert recording.calls == ["add alpha/client-0", "delete alpha/client-0"]
    assert pods_of(lab) == ORIGINAL_PODS


class OtherPython(LabDriver):
    """The lab's driver, running another program than Python as the in-pod client."""

    def __init__(self, lab: Lab, program: str) -> None:
        super().__init__(lab.name, lab.config)
        self.program = program

    def python(self) -> str:
        return self.program


def test_probe_errors_are_readable(lab: Lab) -> None:
    pod = Pod("alpha", "node0", "echo-0-0", "10.1.1.10")
    with pytest.raises(ProbeError) as failed:
        Prober(OtherPython(lab, "false")).probe(pod, "tcp", "10.96.240.10", 80)
    assert str(failed.value) == (
        "the client failed in pod alpha/node0/echo-0-0 (exit 1): no output -- can the driver's "
        "python import e2e inside pods?"
    )
    with pytest.raises(
        ProbeError, match=r"the client in pod alpha/node0/echo-0-0 printed '-m e2e.client tcp"
    ):
        Prober(OtherPython(lab, "echo")).probe(pod, "tcp", "10.96.240.10", 80)


# --- `meshctl connectivity test`: formats and exit codes ----------------------------------


def ok(t: TestContext) -> str:
    return "all good"


def bad(t: TestContext) -> str:
    raise CheckFailed("expected a; saw b; likely cause: c")


STAND_INS = (
    TestCase("stand-in/ok", ok),
    TestCase("stand-in/bad", bad),
    TestCase("stand-in/disruptive", ok, disruptive=True),
)


def invoke(lab: Lab, *args: str) -> Result:
    """``meshctl connectivity test --multi-cluster --lab NAME ARGS`` in this process (so that
    the suite's tests can be replaced by stand-ins)."""
    return CliRunner(env={"MESHCTL_CONFIG": str(lab.config)}).invoke(
        meshctl.connectivity_commands.connectivity_group,
        ["test", "--multi-cluster", "--lab", lab.name, *args],
    )


def test_table_and_exit_code_1_on_a_failure(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e.suite, "TESTS", STAND_INS)
    result = invoke(lab)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Connectivity test: clients in cell 'alpha', destination cell 'beta'"
    assert lines[2].split() == ["TEST", "RESULT", "DURATION", "DETAIL"]
    assert lines[3].split()[:2] == ["stand-in/ok", "passed"]
    assert lines[4].split()[:2] == ["stand-in/bad", "failed"]
    assert lines[4].endswith("expected a; saw b; likely cause: c")
    assert lines[5].split()[:3] == ["stand-in/disruptive", "skipped", "-"]
    assert lines[-1] == "1 passed, 1 failed, 1 skipped"
    assert "running stand-in/ok ..." in result.stderr


def test_json_and_exit_code_0(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2e.suite, "TESTS", STAND_INS)
    result = invoke(
        lab, "--context", f"{lab.name}-beta", "--destination-context", "alpha",
        "--test", "*/ok", "--test", "disruptive", "--include-disruptive", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["source"], doc["destination"]) == ("beta", "alpha")
    assert [(r["name"], r["result"]) for r in doc["results"]] == [
        ("stand-in/ok", "passed"),
        ("stand-in/disruptive", "passed"),
    ]
    assert doc["summary"] == {"passed": 2, "failed": 0, "skipped": 0}
    assert result.stderr == ""


def test_unknown_cell_is_a_usage_error(lab: Lab) -> None:
    result = invoke(lab, "--context", "delta")
    assert result.exit_code == 2
    assert "--context 'delta' is neither a cell nor a cell's context" in result.stderr


# --- the whole suite, then a broken datapath ------------------------------------------------


def connectivity_test(
    lab: Lab, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return lab.meshctl(
        "connectivity", "test", "--multi-cluster", "--lab", lab.name, *args, timeout=600
    )


def test_every_test_passes_including_the_disruptive_ones(lab: Lab) -> None:
    done = connectivity_test(lab, "--include-disruptive", "-o", "json")
    doc = json.loads(done.stdout)
    failed = {r["name"]: r["detail"] for r in doc["results"] if r["result"] != "passed"}
    assert failed == {}
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in doc["results"]] == [case.name for case in TESTS]
    assert doc["summary"] == {"passed": len(TESTS), "failed": 0, "skipped": 0}
    assert doc["cleanup_errors"] == []
    # The suite removed everything it made; the lab is as healthy as before.
    assert pods_of(lab) == ORIGINAL_PODS
    admin = MeshAdmin(LabDriver(lab.name, lab.config))
    assert admin.services("alpha") == admin.services("beta") == []
    ready = lab.meshctl("status", "--context", f"{lab.name}-beta", "--wait")
    assert ready.returncode == 0, ready.stdout + ready.stderr


def detach_socket_lb(instance: str) -> None:
    """Detach every program of the instance from its cgroup, whoever holds the links."""
    links = Path("/sys/fs/bpf/cellmesh", instance, "links")
    names = sorted(p.name for p in links.iterdir())
    assert names == ["sock4_connect", "sock4_getpeername", "sock4_recvmsg", "sock4_sendmsg"]
    for name in names:
        subprocess.run(["bpftool", "link", "detach", "pinned", str(links / name)], check=True)


def test_a_detached_socket_lb_fails_the_suite_with_a_readable_reason(lab: Lab) -> None:
    detach_socket_lb(f"{lab.name}-alpha-node0")  # the node of the client pod in alpha
    done = connectivity_test(
        lab, "--test", "pod-to-pod/cross-cell/tcp", "--test", "global-service/both-cells"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert rows["pod-to-pod/cross-cell/tcp"].split()[1] == "passed"  # routes are not BPF
    broken = rows["global-service/both-cells"]
    assert broken.split()[1] == "failed"
    assert "to service global-tcp (10.96.240." in broken
    assert "expected replies from backends of both 'alpha' and 'beta'" in broken
    # Untranslated, the connect goes to the VIP itself, which no route leads to.
    cause = re.search(r"likely cause: no reply from the VIP \((.*?)\): (is .*)", broken)
    assert cause is not None, broken
    kinds = set(cause.group(1).split("/"))  # ICMP errors, rate-limited: some attempts time out
    assert kinds <= {"Network is unreachable (ENETUNREACH)", "timed out"}, broken
    assert cause.group(2).startswith("is the socket LB attached to the client pod's cgroup")
    assert done.stdout.splitlines()[-1] == "1 passed, 1 failed"
    assert "Traceback" not in done.stderr
    assert pods_of(lab) == ORIGINAL_PODS
