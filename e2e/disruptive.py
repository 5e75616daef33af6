"""The disruptive tests (``--include-disruptive``): control-plane outages must not cut traffic.

- remote-meshapi-down: B's meshapi stops; A's clients keep reaching B's backends (the agents keep
  B's last-known-good state) for ``config.outage`` seconds; then B's meshapi is started again.
- remote-meshapi-restart: B's meshapi restarts; a pod added in B afterwards becomes reachable
  from A (the agent's peer watcher reconnected and resumed).
- agent-restart: the agent of A's client node restarts while a client loops through a VIP; not
  one connection may fail (pinned maps; nothing deleted before every cell synced again).
Whatever they stop is started again by a cleanup entry, also when the test fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from e2e.checks import Target, TestContext
from e2e.environment import ServiceSpec
from e2e.probe import CheckFailed, Observation

__all__ = ["CASES"]


def _remote_only_service(t: TestContext, name: str) -> Target:
    """Service ``name``, global in A and B, with one backend in B only: A's traffic goes to B."""
    vips = t.env.service(name, {t.a: ServiceSpec(), t.b: ServiceSpec()})
    t.wait_registered(t.env.backend(t.b, f"{name}-1", name), name)
    target = Target.service(name, vips[t.a])
    t.expect(
        t.env.client(t.a),
        target,
        lambda seen: seen.only_from(t.b),
        expected=f"{t.b!r}'s backend to answer before the disruption",
        cause=f"{t.b!r}'s backend is not used from {t.a!r}: is the peer connected and ready "
        "(`meshctl status`)?",
    )
    return target


def _stop_meshapi(t: TestContext) -> Callable[[], None]:
    """Stop B's meshapi; the returned callable starts it again (once; cleanup does it too)."""
    stopped = [True]

    def restart() -> None:
        if stopped[0]:
            t.driver.start_meshapi(t.b)
            stopped[0] = False

    t.driver.stop_meshapi(t.b)
    t.env.on_cleanup(f"start the meshapi of {t.b}", restart)
    return restart


def remote_meshapi_down(t: TestContext) -> str:
    name = "meshapi-down"
    target = _remote_only_service(t, name)
    client = t.env.client(t.a)
    restart = _stop_meshapi(t)
    total = Observation()
    start = time.monotonic()
    while time.monotonic() - start < t.config.outage:
        seen = t.round(client, target)()
        total = total + seen
        if not seen.only_from(t.b):
            raise CheckFailed(
                f"from pod {client.cell}/{client.name} to {target.label} with {t.b!r}'s meshapi "
                f"down for {time.monotonic() - start:.0f}s: expected every attempt answered by "
                f"{t.b!r}'s backend; saw {seen.describe()}; likely cause: the agent dropped "
                f"{t.b!r}'s last-known-good backends when the peer went stale"
            )
    restart()
    return f"{t.b!r}'s meshapi down for {t.config.outage:.0f}s: {total.describe()}"


def remote_meshapi_restart(t: TestContext) -> str:
    name = "meshapi-restart"
    _remote_only_service(t, name)
    _stop_meshapi(t)()  # stop, then start again at once
    newcomer = t.env.backend(t.b, f"{name}-2", name)
    t.wait_registered(newcomer, name)
    vip = t.env.vip(t.a, name)
    seen = t.expect(
        t.env.client(t.a),
        Target.service(name, vip),
        lambda seen: not seen.failures and newcomer.name in seen.pods(),
        expected=f"the pod {newcomer.name} added in {t.b!r} after its meshapi restarted to answer",
        cause=f"the agent in {t.a!r} did not catch up with {t.b!r} after the restart: does its "
        "peer watcher reconnect and resume (`meshctl status`)?",
        accumulate=True,
    )
    return seen.describe()


def agent_restart(t: TestContext) -> str:
    name = "agent-restart"
    vips = t.env.service(name, {t.a: ServiceSpec(), t.b: ServiceSpec()})
    for pod in (t.env.backend(t.a, f"{name}-a", name), t.env.backend(t.b, f"{name}-b", name)):
        t.wait_registered(pod, name)
    client, target = t.env.client(t.a), Target.service(name, vips[t.a])
    t.expect(
        client,
        target,
        lambda seen: not seen.failures and seen.cells() >= {t.a, t.b},
        expected="both cells' backends to answer before the restart",
        cause="the service is not fully programmed yet; is the peer connected?",
        accumulate=True,
    )
    outcome: list[Observation | BaseException] = []
    done = threading.Event()

    def loop() -> None:
        try:
            outcome.append(
                t.prober.probe(
                    client,
                    "tcp",
                    target.host,
                    target.port,
                    interval=0.02,
                    duration=t.config.client_loop,
                )
            )
        except BaseException as e:  # handed to the test's thread
            outcome.append(e)
        finally:
            done.set()

    worker = threading.Thread(target=loop, name="agent-restart-client", daemon=True)
    worker.start()
    # Let the loop get going first; if it ends this early, it could not run at all.
    if done.wait(min(2.0, t.config.client_loop / 4)):
        worker.join()
        early = _loop_result(t, outcome, "before the restart")
        raise CheckFailed(f"the client loop ended before the agent was restarted ({early})")
    t.driver.restart_agent(client.cell, client.node)
    restarted_in_time = not done.is_set()
    worker.join(t.config.client_loop + t.prober.attempt_timeout + 30.0)
    detail = _loop_result(t, outcome, f"while the agent of {client.cell}/{client.node} restarted")
    if not restarted_in_time:
        raise CheckFailed(
            f"the client loop ({t.config.client_loop:.0f}s) ended before restart_agent returned: "
            f"the restart was not covered ({detail}); the agent takes too long to restart"
        )
    return detail


def _loop_result(t: TestContext, outcome: list[Observation | BaseException], when: str) -> str:
    if not outcome:
        raise CheckFailed(f"the client loop did not finish {when}")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise CheckFailed(f"the client loop failed {when}: {result}")
    if result.failures or not result.answered:
        raise CheckFailed(
            f"expected no failed connection {when}; saw {result.describe()}; likely cause: the "
            "restarted agent deleted or rewrote map entries before every cell had synced, or "
            "the programs were detached on stop (they must stay pinned)"
        )
    return f"{when}: {result.describe()}"


CASES: tuple[tuple[str, Callable[[TestContext], str]], ...] = (
    ("disruptive/remote-meshapi-down", remote_meshapi_down),
    ("disruptive/remote-meshapi-restart", remote_meshapi_restart),
    ("disruptive/agent-restart", agent_restart),
)
