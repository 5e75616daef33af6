"""The suite's non-disruptive tests: pod to pod, global services, affinity, shared, non-global.

Each test is a function of a ``TestContext`` that creates its own service (its own name, so its
own VIPs) and echo pods, checks what the client pods see through ``expect``/``hold``, and returns
a one-line detail; a miss raises ``CheckFailed``. Cleanup is the runner's (``Environment``).
Waits are ordered so that a pass means something: e.g. affinity first proves that the other
side's backend is reachable (spill-over) before it checks that the preferred side wins.
"""

from __future__ import annotations

from collections.abc import Callable

from e2e.checks import Target, TestContext
from e2e.driver import Pod
from e2e.environment import ECHO_PORT, ServiceSpec
from e2e.probe import Backend, Observation

__all__ = ["CASES"]

PEER_HINT = "is the peer connected and ready (`meshctl status`)?"


def _answered_by(pod: Pod) -> Callable[[Observation], bool]:
    backend = Backend(pod.cell, pod.node, pod.name)
    return lambda seen: seen.answered > 0 and not seen.failures and set(seen.replies) == {backend}


def _only(cell: str) -> Callable[[Observation], bool]:
    return lambda seen: seen.only_from(cell)


def _from_cells(*cells: str) -> Callable[[Observation], bool]:
    return lambda seen: not seen.failures and seen.cells() >= set(cells)


def _pod_to_pod(t: TestContext, target: Pod, protocol: str, note: str = "") -> str:
    client = t.env.client(t.a)
    seen = t.expect(
        client,
        Target.pod(target, ECHO_PORT),
        _answered_by(target),
        expected=f"every attempt answered by {target.cell}/{target.node}/{target.name}",
        cause="another pod answered: is that address used twice (overlapping pod CIDRs)?",
        protocol=protocol,
    )
    return seen.describe() + note


def pod_to_pod_cross_cell_tcp(t: TestContext) -> str:
    return _pod_to_pod(t, t.env.target(t.b, t.driver.nodes(t.b)[0], "p2p-remote"), "tcp")


def pod_to_pod_cross_cell_udp(t: TestContext) -> str:
    return _pod_to_pod(t, t.env.target(t.b, t.driver.nodes(t.b)[0], "p2p-remote"), "udp")


def pod_to_pod_same_cell(t: TestContext) -> str:
    nodes = t.driver.nodes(t.a)
    if len(nodes) > 1:
        return _pod_to_pod(t, t.env.target(t.a, nodes[1], "p2p-local"), "tcp")
    note = f" (cell {t.a!r} has one node: tested on the same node)"
    return _pod_to_pod(t, t.env.target(t.a, nodes[0], "p2p-local"), "tcp", note)


def _global_both_cells(t: TestContext, name: str, protocol: str) -> str:
    vips = t.env.service(name, {t.a: ServiceSpec(), t.b: ServiceSpec()})
    pods = [t.env.backend(t.a, f"{name}-a", name), t.env.backend(t.b, f"{name}-b", name)]
    for pod in pods:
        t.wait_registered(pod, name)
    seen = t.expect(
        t.env.client(t.a),
        Target.service(name, vips[t.a]),
        _from_cells(t.a, t.b),
        expected=f"replies from backends of both {t.a!r} and {t.b!r}",
        cause=f"only one cell's backends answer: the agent does not merge {t.b!r}'s backends; "
        + PEER_HINT,
        protocol=protocol,
        accumulate=True,
    )
    return seen.describe()


def global_service_both_cells(t: TestContext) -> str:
    return _global_both_cells(t, "global-tcp", "tcp")


def global_service_udp(t: TestContext) -> str:
    return _global_both_cells(t, "global-udp", "udp")


def _affinity_preferred(affinity: str) -> Callable[[TestContext], str]:
    """affinity local (remote): the preferred side wins while one of its backends is ready;
    before it is ready and after it is deleted, traffic goes to the other side."""

    def test(t: TestContext) -> str:
        name = f"affinity-{affinity}"
        preferred, other = (t.a, t.b) if affinity == "local" else (t.b, t.a)
        spec = ServiceSpec(affinity=affinity)
        vips = t.env.service(name, {t.a: spec, t.b: spec})
        favourite = t.env.backend(preferred, f"{name}-p", name, ready=False)
        fallback = t.env.backend(other, f"{name}-o", name)
        t.wait_registered(fallback, name)
        t.wait_registered(favourite, name, ready=False)
        client, target = t.env.client(t.a), Target.service(name, vips[t.a])

        t.expect(
            client,
            target,
            _only(other),
            expected=f"only {other!r}'s backend while the {affinity} side's is not ready",
            cause=f"the not-ready pod in {preferred!r} answers: the agent selects endpoints "
            "that are not ready",
        )
        t.driver.set_ready(favourite.cell, favourite.node, favourite.name, True)
        t.wait_registered(favourite, name, ready=True)
        expectation = f"only {preferred!r}'s backend (affinity {affinity}, one is ready)"
        wrong = (
            f"{other!r}'s backend still answers: affinity {affinity} is not applied; does the "
            f"service in {t.a!r} carry service.cilium.io/affinity={affinity}?"
        )
        t.expect(client, target, _only(preferred), expected=expectation, cause=wrong)
        held = t.hold(client, target, _only(preferred), expected=expectation, cause=wrong)

        t.env.delete_backend(favourite)
        after = t.expect(
            client,
            target,
            _only(other),
            expected=f"traffic to spill over to {other!r} once {preferred!r}'s pod is deleted",
            cause=f"the deleted pod is still selected, or {other!r}'s backends are not used; "
            + PEER_HINT,
        )
        return f"preferred: {held.describe()}; after deleting it: {after.describe()}"

    return test


def affinity_none(t: TestContext) -> str:
    name = "affinity-none"
    spec = ServiceSpec(affinity="none")
    vips = t.env.service(name, {t.a: spec, t.b: spec})
    for pod in (t.env.backend(t.a, f"{name}-a", name), t.env.backend(t.b, f"{name}-b", name)):
        t.wait_registered(pod, name)
    seen = t.expect(
        t.env.client(t.a),
        Target.service(name, vips[t.a]),
        _from_cells(t.a, t.b),
        expected=f"replies spread over {t.a!r} and {t.b!r}",
        cause="only one cell answers: affinity none must use both cells' backends; " + PEER_HINT,
        accumulate=True,
    )
    return seen.describe()


def shared_false_active_passive(t: TestContext) -> str:
    name = "shared-false"
    vips = t.env.service(name, {t.a: ServiceSpec(shared=False), t.b: ServiceSpec()})
    for pod in (t.env.backend(t.a, f"{name}-a", name), t.env.backend(t.b, f"{name}-b", name)):
        t.wait_registered(pod, name)
    in_a = Target.service(name, vips[t.a])
    in_b = Target.service(name, vips[t.b])
    client_a, client_b = t.env.client(t.a), t.env.client(t.b)

    t.expect(
        client_a,
        in_a,
        _from_cells(t.a, t.b),
        expected=f"{t.a!r}'s clients to use both cells' backends (shared=false only stops "
        "exporting its own)",
        cause=f"{t.b!r}'s backends are not used from {t.a!r}; " + PEER_HINT,
        accumulate=True,
    )
    passive = f"only {t.b!r}'s backend from {t.b!r} ({t.a!r} does not share its backends)"
    leak = f"{t.a!r}'s backend answers in {t.b!r}: its shared=false service is exported"
    t.expect(client_b, in_b, _only(t.b), expected=passive, cause=leak)
    held = t.hold(client_b, in_b, _only(t.b), expected=passive, cause=leak)

    t.env.update_service(t.a, name, ServiceSpec(shared=True))
    shared = t.expect(
        client_b,
        in_b,
        _from_cells(t.a, t.b),
        expected=f"{t.a!r}'s backend reachable from {t.b!r} once {t.a!r} sets shared=true",
        cause=f"the export view of {t.a!r} did not re-evaluate the service's endpoints",
        accumulate=True,
    )
    return f"from {t.b!r} while not shared: {held.describe()}; once shared: {shared.describe()}"


def non_global_stays_local(t: TestContext) -> str:
    name = "non-global"
    spec = ServiceSpec(global_=False)
    vips = t.env.service(name, {t.a: spec, t.b: spec})
    for pod in (t.env.backend(t.a, f"{name}-a", name), t.env.backend(t.b, f"{name}-b", name)):
        t.wait_registered(pod, name)
    details = []
    for cell in (t.a, t.b):
        client, target = t.env.client(cell), Target.service(name, vips[cell])
        expected = f"only {cell!r}'s own backend from {cell!r} (the service is not global)"
        wrong = "the other cell's backend answers: a non-global service must stay local"
        t.expect(client, target, _only(cell), expected=expected, cause=wrong)
        held = t.hold(client, target, _only(cell), expected=expected, cause=wrong)
        details.append(f"from {cell!r}: {held.describe()}")
    return "; ".join(details)


CASES: tuple[tuple[str, Callable[[TestContext], str]], ...] = (
    ("pod-to-pod/cross-cell/tcp", pod_to_pod_cross_cell_tcp),
    ("pod-to-pod/cross-cell/udp", pod_to_pod_cross_cell_udp),
    ("pod-to-pod/same-cell", pod_to_pod_same_cell),
    ("global-service/both-cells", global_service_both_cells),
    ("global-service/udp", global_service_udp),
    ("affinity/local", _affinity_preferred("local")),
    ("affinity/remote", _affinity_preferred("remote")),
    ("affinity/none", affinity_none),
    ("shared-false/active-passive", shared_false_active_passive),
    ("non-global/stays-local", non_global_stays_local),
)
