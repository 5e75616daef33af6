"""The suite's pure parts: test selection, observations, waits, and the likely causes it names.

The runner, the environment and every test run against a real lab in tests/lab/test_connectivity.py.
"""

from __future__ import annotations

import json

import pytest

from e2e.checks import Target, likely_cause
from e2e.driver import Pod
from e2e.probe import Observation, wait_until
from e2e.suite import TESTS, SuiteError, matches
from e2e.suite import select_tests as select

# --- selection --------------------------------------------------------------------


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


# --- observations, waits, causes -----------------------------------------------------------


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


def seen(replies: dict[str, int], errors: dict[str, int] | None = None) -> Observation:
    errors = errors or {}
    return Observation.from_json(
        json.dumps({"replies": replies, "failures": sum(errors.values()), "errors": errors})
    )


VIP = Target.service("svc", "10.96.240.10")
POD = Target.pod(Pod("beta", "node0", "p", "10.2.1.10"), 8080)
REVERSE = (
    "reply from 10.2.1.10:8080, not from 10.96.240.10:80 "
    "(no reverse translation of the reply's source)"
)
WRONG = "'beta''s backend still answers: affinity local is not applied"


@pytest.mark.parametrize(
    ("observation", "target", "cause"),
    [
        pytest.param(
            seen({"alpha node0 a": 3, "beta node0 b": 3}), VIP, WRONG, id="wrong-backends"
        ),
        pytest.param(
            seen({}, {"connect: Network is unreachable (ENETUNREACH)": 2, "connect: timed out": 4}),
            VIP,
            "no reply from the VIP (Network is unreachable (ENETUNREACH)/timed out): is the "
            "socket LB attached to the client pod's cgroup",
            id="vip-dark",
        ),
        pytest.param(
            seen({}, {"connect: Connection refused (ECONNREFUSED)": 6}),
            POD,
            "no reply from the pod (Connection refused (ECONNREFUSED)): is it running, and does "
            "the client's node have a route to its node's pod CIDR?",
            id="pod-dark",
        ),
        pytest.param(
            seen({"beta node0 b": 5}, {"connect: timed out": 1}),
            VIP,
            "some attempts failed: a backend that is gone or not listening is still selected "
            "(stale map entries?), or TCP is dropped on the way",
            id="some-failed",
        ),
        pytest.param(
            seen({}, {REVERSE: 6}),
            VIP,
            "UDP replies come back from the backend's address, not the VIP: is the recvmsg4 "
            "program attached",
            id="no-reverse-nat",
        ),
    ],
)
def test_likely_cause_names_the_layer_to_look_at(
    observation: Observation, target: Target, cause: str
) -> None:
    assert likely_cause(observation, target, "tcp", WRONG).startswith(cause)
