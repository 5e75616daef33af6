"""``RouteTable`` against the kernel, in a private namespace per test, checked with ``ip``.

Every test runs in its own ``cmtest-<hex>`` namespace whose only link cm0 has 192.168.77.1/24,
so gateways 192.168.77.x are reachable and 10.200.0.1 is not. ``ip -j route`` is the independent
client that checks what ``RouteTable`` programmed; the host namespace's routes are compared
before and after every test.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from nodeagent.routes import DEFAULT_PROTOCOL, RouteError, RouteTable, SyncResult
from tests.nodeagent.conftest import RouteNetns, route_netns_exists

pytestmark = pytest.mark.usefixtures("root_netns_unchanged")

PROTO = DEFAULT_PROTOCOL

NET_A = IPv4Network("10.2.0.0/24")
NET_B = IPv4Network("10.2.1.0/24")
NET_C = IPv4Network("10.3.0.0/16")
GW_1 = IPv4Address("192.168.77.2")
GW_2 = IPv4Address("192.168.77.3")
UNREACHABLE = IPv4Address("10.200.0.1")
FOREIGN = "10.99.0.0/16"


def ours(ns: RouteNetns) -> dict[str, str]:
    """Routes with our protocol, as iproute2 sees them: destination -> gateway."""
    return {dst: r.get("gateway", "") for dst, r in ns.routes("proto", str(PROTO)).items()}


@pytest.fixture
def table(route_netns: RouteNetns) -> Iterator[RouteTable]:
    with RouteTable(netns=route_netns.name, protocol=PROTO) as t:
        yield t


def test_sync_adds_routes(route_netns: RouteNetns, table: RouteTable) -> None:
    result = table.sync({NET_A: GW_1, NET_B: GW_2, NET_C: GW_1})

    assert result == SyncResult(added=(NET_A, NET_B, NET_C))
    assert ours(route_netns) == {
        "10.2.0.0/24": "192.168.77.2",
        "10.2.1.0/24": "192.168.77.3",
        "10.3.0.0/16": "192.168.77.2",
    }
    assert table.list() == {NET_A: GW_1, NET_B: GW_2, NET_C: GW_1}


def test_sync_again_changes_nothing(route_netns: RouteNetns, table: RouteTable) -> None:
    desired = {NET_A: GW_1, NET_B: GW_2}
    table.sync(desired)
    before = route_netns.routes()

    result = table.sync(desired)

    assert result == SyncResult()
    assert not result.changed
    assert route_netns.routes() == before


def test_changed_gateway_is_replaced(route_netns: RouteNetns, table: RouteTable) -> None:
    table.sync({NET_A: GW_1, NET_B: GW_1})

    result = table.sync({NET_A: GW_2, NET_B: GW_1})

    assert result == SyncResult(replaced=(NET_A,))
    assert ours(route_netns) == {"10.2.0.0/24": "192.168.77.3", "10.2.1.0/24": "192.168.77.2"}


def test_route_no_longer_desired_is_deleted(route_netns: RouteNetns, table: RouteTable) -> None:
    table.sync({NET_A: GW_1, NET_B: GW_2})

    assert table.sync({NET_B: GW_2}) == SyncResult(deleted=(NET_A,))
    assert ours(route_netns) == {"10.2.1.0/24": "192.168.77.3"}
    assert table.sync({}) == SyncResult(deleted=(NET_B,))
    assert ours(route_netns) == {}


def test_routes_of_other_protocols_are_never_touched(
    route_netns: RouteNetns, table: RouteTable
) -> None:
    route_netns.ip("route", "add", FOREIGN, "via", "192.168.77.9")  # proto boot
    foreign = route_netns.routes()[FOREIGN]
    connected = route_netns.routes()["192.168.77.0/24"]  # proto kernel

    assert table.list() == {}
    table.sync({NET_A: GW_1})
    assert table.sync({}) == SyncResult(deleted=(NET_A,))
    # Desiring the foreign route's destination must not overwrite it: add is create-exclusive.
    result = table.sync({IPv4Network(FOREIGN): GW_1, NET_B: GW_1})

    assert result.added == (NET_B,)
    assert result.errors == {IPv4Network(FOREIGN): f"{FOREIGN} via {GW_1}: File exists (EEXIST)"}
    assert route_netns.routes()[FOREIGN] == foreign
    assert route_netns.routes()["192.168.77.0/24"] == connected


def test_tables_with_different_protocols_are_independent(route_netns: RouteNetns) -> None:
    with (
        RouteTable(netns=route_netns.name, protocol=PROTO) as first,
        RouteTable(netns=route_netns.name, protocol=PROTO + 1) as second,
    ):
        first.sync({NET_A: GW_1})
        assert second.sync({NET_B: GW_2}) == SyncResult(added=(NET_B,))

        assert first.sync({}) == SyncResult(deleted=(NET_A,))
        assert second.list() == {NET_B: GW_2}
        assert route_netns.routes("proto", str(PROTO + 1))["10.2.1.0/24"]["gateway"] == str(GW_2)


def test_unreachable_gateway_fails_only_its_route(
    route_netns: RouteNetns, table: RouteTable
) -> None:
    result = table.sync({NET_A: GW_1, NET_B: UNREACHABLE, NET_C: GW_2})

    assert result.added == (NET_A, NET_C)
    assert result.errors == {
        NET_B: f"{NET_B} via {UNREACHABLE}: Network is unreachable (ENETUNREACH)"
    }
    assert ours(route_netns) == {"10.2.0.0/24": "192.168.77.2", "10.3.0.0/16": "192.168.77.3"}
    # The failed route is retried by the next sync, and still fails alone.
    again = table.sync({NET_A: GW_1, NET_B: UNREACHABLE, NET_C: GW_2})
    assert (again.changed, set(again.errors)) == (False, {NET_B})


def test_missing_namespace_raises_and_is_not_created() -> None:
    name = f"cmtest-{secrets.token_hex(4)}-missing"
    with RouteTable(netns=name) as t, pytest.raises(RouteError, match=r"No such file.*\(ENOENT\)"):
        t.sync({NET_A: GW_1})
    assert not route_netns_exists(name)


def test_close_then_reuse_reopens(route_netns: RouteNetns) -> None:
    t = RouteTable(netns=route_netns.name, protocol=PROTO)
    t.sync({NET_A: GW_1})
    t.close()
    t.close()  # idempotent

    assert t.list() == {NET_A: GW_1}
    t.close()


def test_calls_from_many_threads_share_one_socket_and_serialize(
    route_netns: RouteNetns, table: RouteTable
) -> None:
    """As the agent calls it: ``asyncio.to_thread`` from the default pool, concurrently."""
    desired = {NET_A: GW_1, NET_B: GW_2}

    async def agent() -> list[SyncResult]:
        table.list()  # on the loop thread itself: blocks briefly, but works
        return await asyncio.gather(*(asyncio.to_thread(table.sync, desired) for _ in range(8)))

    assert table.list() == {}
    handle = table._ipr
    assert handle is not None
    results = asyncio.run(agent())

    # Serialized: exactly one call saw the routes missing; no call raced it into EEXIST.
    assert sorted(r.added for r in results) == [()] * 7 + [(NET_A, NET_B)]
    assert all(not r.errors for r in results)
    assert ours(route_netns) == {"10.2.0.0/24": "192.168.77.2", "10.2.1.0/24": "192.168.77.3"}
    assert table._ipr is handle  # one netlink socket, opened once


def test_protocol_must_be_a_free_number() -> None:
    for protocol in (0, 2, 3, 256):
        with pytest.raises(ValueError, match="protocol"):
            RouteTable(netns=None, protocol=protocol)


def test_our_routes_without_a_gateway_are_replaced_or_deleted(
    route_netns: RouteNetns, table: RouteTable
) -> None:
    route_netns.ip("route", "add", str(NET_A), "dev", "cm0", "proto", str(PROTO))
    route_netns.ip("route", "add", "blackhole", str(NET_B), "proto", str(PROTO))

    assert table.list() == {}  # ours, but not a route via a gateway
    assert table.sync({NET_A: GW_1}) == SyncResult(replaced=(NET_A,), deleted=(NET_B,))
    assert ours(route_netns) == {"10.2.0.0/24": "192.168.77.2"}


def test_broken_socket_is_reported_then_reopened(
    route_netns: RouteNetns, table: RouteTable
) -> None:
    table.sync({NET_A: GW_1})
    ipr = table._ipr
    assert ipr is not None
    table._on_worker(ipr.close)  # the socket dies under the table (on its own thread)

    with pytest.raises(RouteError, match=r"route dump: Bad file descriptor \(EBADF\)"):
        table.list()
    assert table.list() == {NET_A: GW_1}
