"""`WipeRecovery` (pure): which canaries come back when after a wipe, and what is reported lost."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from meshapi.resync import Release, WipeRecovery
from meshcore.model import AgentStatus, Kind, Node, Record
from tests.meshapi.helpers import endpoint, peer, service


def node(name: str) -> Node:
    n = int(name[-1])
    return Node(
        cell="alpha", name=name, addresses=[ip_address(f"192.168.1.{n}")],
        pod_cidrs=[f"10.1.{n}.0/24"],
    )  # fmt: skip


def agent_status(name: str) -> AgentStatus:
    return AgentStatus(cell="alpha", node=name, updated_at=1.0, ready=True)


def keyed(*records: Record) -> dict[str, Record]:
    return {r.key(): r for r in records}


BEFORE = keyed(
    node("a1"),
    node("a2"),
    endpoint("alpha", 1, node="a1"),
    endpoint("alpha", 2, node="a2"),
    agent_status("a1"),
    service("alpha"),
    peer("alpha", "beta", id_=2),
)


def recovering(**grace: float) -> WipeRecovery:
    core = WipeRecovery("alpha", **grace)
    core.reset(BEFORE, now=100.0)
    return core


def test_a_store_without_a_wipe_withholds_nothing() -> None:
    core = WipeRecovery("alpha")
    assert core.step({}, now=0.0) == {}
    assert core.withheld == frozenset()
    assert core.lost() == []


def test_own_kinds_and_kinds_with_nothing_to_wait_for_come_back_at_once() -> None:
    core = recovering()
    released = core.step({}, now=100.0)
    assert released == {
        Kind.CELL: Release.OWN,
        Kind.HEARTBEAT: Release.OWN,
        Kind.IDENTITY: Release.RESTORED,
        Kind.IP_IDENTITY: Release.RESTORED,
    }
    assert core.withheld == {Kind.NODE, Kind.ENDPOINT, Kind.AGENT, Kind.SERVICE, Kind.PEER}


def test_nodes_and_endpoints_wait_for_every_node_that_was_registered() -> None:
    core = recovering()
    core.step({}, now=100.0)
    a1 = keyed(node("a1"), endpoint("alpha", 1, node="a1"))
    assert core.step(a1, now=101.0) == {}
    withheld = core.status(101.0)["withheld"]
    assert withheld["nodes"]["waiting_for_nodes"] == ["a2"]  # type: ignore[index]
    back = a1 | keyed(node("a2"))
    assert core.step(back, now=102.0) == {Kind.NODE: Release.RELISTED}
    assert core.step(back | keyed(agent_status("a1")), now=103.0) == {Kind.AGENT: Release.RELISTED}
    # A peer sees only the endpoints of exported services: endpoints wait for the services.
    withheld = core.status(103.0)["withheld"]
    assert withheld["endpoints"]["waiting_for_kinds"] == ["services"]  # type: ignore[index]
    restored = back | keyed(service("alpha"))
    assert core.step(restored, now=104.0) == {
        Kind.SERVICE: Release.RESTORED,
        Kind.ENDPOINT: Release.RELISTED,
    }


def test_endpoints_wait_for_lost_services_beyond_their_own_grace() -> None:
    core = recovering(resync_grace=30.0, lost_state_grace=900.0)
    assert Kind.ENDPOINT not in core.step({}, now=200.0)
    released = core.step({}, now=1000.0)
    assert released[Kind.SERVICE] is Release.GRACE
    assert released[Kind.ENDPOINT] is Release.GRACE


def test_the_resync_grace_ends_the_wait_for_a_node_that_never_returns() -> None:
    core = recovering(resync_grace=30.0)
    a1 = keyed(node("a1"))
    assert Kind.NODE not in core.step(a1, now=129.9)
    assert core.step(a1, now=130.0)[Kind.NODE] is Release.GRACE


def test_operator_records_are_lost_with_the_command_that_restores_them() -> None:
    core = recovering()
    core.step({}, now=100.0)
    lost = {r.name: r.restore for r in core.lost()}
    assert lost == {
        "demo/echo": "meshctl --context alpha apply -f <the manifest of demo/echo>",
        "beta": "meshctl connect --context alpha --destination-context beta",
    }
    assert set(core.remembered_peers()) == {peer("alpha", "beta", id_=2).key()}
    restored = keyed(service("alpha"))
    assert core.step(restored, now=101.0) == {Kind.SERVICE: Release.RESTORED}
    assert [r.name for r in core.lost()] == ["beta"]


@pytest.mark.parametrize(
    ("now", "released"),
    [
        pytest.param(100.0 + 899.0, False, id="within-grace"),
        pytest.param(100.0 + 900.0, True, id="grace-over"),
    ],
)
def test_lost_state_grace_ends_the_hold(now: float, released: bool) -> None:
    core = recovering(lost_state_grace=900.0)
    core.step({}, now=100.0)
    out = core.step({}, now=now)
    assert (out.get(Kind.PEER) is Release.GRACE) is released
    assert bool(core.remembered_peers()) is not released
    assert bool(core.lost()) is not released


def test_a_second_wipe_during_recovery_keeps_what_is_still_lost() -> None:
    core = recovering()
    core.step({}, now=100.0)
    core.reset(keyed(node("a1")), now=150.0)  # the second store held only a1 again
    core.step({}, now=150.0)
    assert {r.name for r in core.lost()} == {"demo/echo", "beta"}
    assert core.wipes == 2


def test_unicast_peer_records_restore_with_the_unicast_command() -> None:
    grant = peer("alpha", "gamma", id_=3).model_copy(update={"watch": False})
    core = WipeRecovery("alpha")
    core.reset(keyed(grant), now=0.0)
    core.step({}, now=0.0)
    [lost] = core.lost()
    assert lost.restore == (
        "meshctl connect --context gamma --destination-context alpha --connection-mode unicast"
    )
