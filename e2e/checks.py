"""The vocabulary tests are written in: probe a target, wait for an expectation, hold it, explain.

Flow: a test (``e2e.cases``, ``e2e.disruptive``) gets a ``TestContext``: the ``Environment`` to
create services and pods, and ``expect``/``hold`` to poll probes (``e2e.probe``) until what it
expects is seen or the deadline passes. A miss raises ``CheckFailed`` with one readable sentence:
what was expected, what was seen, and the likely cause -- a datapath hint when nothing answered,
the test's own hint when the wrong backends answered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from e2e.driver import MeshDriver, Pod
from e2e.environment import SERVICE_PORT, Environment
from e2e.probe import CheckFailed, Observation, Prober, wait_until

__all__ = ["SuiteConfig", "Target", "TestContext", "likely_cause"]

LAB_STATUS = "see `meshctl lab status`"


@dataclass(frozen=True)
class SuiteConfig:
    wait_timeout: float = 15.0  # per wait: registration re-reads the workloads file every 2 s
    poll_interval: float = 0.5
    requests: int = 20  # attempts per probe round
    hold_rounds: int = 3  # rounds an "only these backends" result must hold
    attempt_timeout: float = 1.0
    outage: float = 8.0  # seconds of traffic checked while a meshapi is down
    client_loop: float = 15.0  # seconds the client loops during an agent restart


@dataclass(frozen=True)
class Target:
    """Where a probe goes: a service VIP or a pod address, and what to call it in messages."""

    host: str
    port: int
    label: str
    vip: bool

    @staticmethod
    def service(name: str, vip: str) -> Target:
        return Target(vip, SERVICE_PORT, f"service {name} ({vip}:{SERVICE_PORT})", True)

    @staticmethod
    def pod(pod: Pod, port: int) -> Target:
        return Target(pod.address, port, f"pod {pod.cell}/{pod.name} ({pod.address}:{port})", False)


def likely_cause(seen: Observation, target: Target, protocol: str, wrong_backends: str) -> str:
    """The most likely cause of ``seen`` not meeting the expectation."""
    if any("no reverse translation" in text for text in seen.errors):
        return (
            "UDP replies come back from the backend's address, not the VIP: is the recvmsg4 "
            f"program attached to the client node's cgroup? {LAB_STATUS}"
        )
    if seen.failures and not seen.answered:
        kinds = sorted({text.split(":", 1)[-1].strip() for text in seen.errors})
        failed = f"{'/'.join(kinds)}"
        if target.vip:
            return (
                f"no reply from the VIP ({failed}): is the socket LB attached to the client "
                "pod's cgroup, and does the client node's agent have the service and backends? "
                f"{LAB_STATUS}, `meshctl bpf services`"
            )
        return (
            f"no reply from the pod ({failed}): is it running, and does the client's node have "
            f"a route to its node's pod CIDR? {LAB_STATUS}"
        )
    if seen.failures:
        return (
            "some attempts failed: a backend that is gone or not listening is still selected "
            f"(stale map entries?), or {protocol.upper()} is dropped on the way; {LAB_STATUS}"
        )
    return wrong_backends


@dataclass
class TestContext:
    """What a test works with; ``a`` and ``b`` are the cells (clients run in ``a``)."""

    __test__ = False  # not a pytest test class

    driver: MeshDriver
    env: Environment
    prober: Prober
    config: SuiteConfig

    @property
    def a(self) -> str:
        return self.env.cell_a

    @property
    def b(self) -> str:
        return self.env.cell_b

    def round(
        self, client: Pod, target: Target, protocol: str = "tcp", *, count: int | None = None
    ) -> Callable[[], Observation]:
        """A probe round from ``client`` to ``target``, as a zero-argument callable."""
        n = count or self.config.requests
        return lambda: self.prober.probe(client, protocol, target.host, target.port, count=n)

    def expect(
        self,
        client: Pod,
        target: Target,
        satisfied: Callable[[Observation], bool],
        *,
        expected: str,
        cause: str,
        protocol: str = "tcp",
        accumulate: bool = False,
    ) -> Observation:
        """Probe until ``satisfied``; with ``accumulate``, over the rounds added up since the
        last round that had failures.

        Raises CheckFailed "from <client> to <target>: expected ...; saw ...; likely cause: ...".
        """
        one_round = self.round(client, target, protocol)
        observe = one_round
        if accumulate:
            total = [Observation()]

            def added_up() -> Observation:
                # Added up since the last round that had failures (e.g. before convergence).
                seen = one_round()
                total[0] = seen if seen.failures else total[0] + seen
                return total[0]

            observe = added_up
        waited = wait_until(
            observe,
            satisfied,
            timeout=self.config.wait_timeout,
            interval=self.config.poll_interval,
        )
        if not waited.ok:
            raise CheckFailed(
                f"from pod {client.cell}/{client.name} to {target.label} over "
                f"{protocol.upper()}: expected {expected}; saw {waited.last.describe()} within "
                f"{waited.elapsed:.0f}s; likely cause: "
                f"{likely_cause(waited.last, target, protocol, cause)}"
            )
        return waited.last

    def hold(
        self,
        client: Pod,
        target: Target,
        satisfied: Callable[[Observation], bool],
        *,
        expected: str,
        cause: str,
        protocol: str = "tcp",
    ) -> Observation:
        """``config.hold_rounds`` further rounds must all satisfy; their sum."""
        total = Observation()
        for n in range(self.config.hold_rounds):
            seen = self.round(client, target, protocol)()
            total = total + seen
            if not satisfied(seen):
                raise CheckFailed(
                    f"from pod {client.cell}/{client.name} to {target.label} over "
                    f"{protocol.upper()}: expected {expected} to hold, but round {n + 1} saw "
                    f"{seen.describe()}; likely cause: "
                    f"{likely_cause(seen, target, protocol, cause)}"
                )
        return total

    def wait_registered(self, pod: Pod, service: str, *, ready: bool = True) -> None:
        """Wait until the pod's endpoint for ``service`` is in its cell's meshapi."""
        waited = wait_until(
            lambda: self.env.registered(pod, service),
            lambda ep: ep is not None and ep.ready is ready,
            timeout=self.config.wait_timeout,
            interval=self.config.poll_interval,
        )
        if not waited.ok:
            state = "no endpoint record" if waited.last is None else f"ready={waited.last.ready}"
            raise CheckFailed(
                f"pod {pod.cell}/{pod.node}/{pod.name} ({pod.address}) as a backend of "
                f"{service}: expected an endpoint record with ready={ready} in cell "
                f"{pod.cell!r}'s meshapi; saw {state} within {waited.elapsed:.0f}s; likely "
                "cause: the node agent did not register the pod's workload (workloads file, "
                f"agent registration errors); {LAB_STATUS}"
            )
