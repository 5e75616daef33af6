"""An agent restart over real pinned maps rewrites nothing that did not change (issue 11, #7).

Alpha's agent runs in process over the kernel's maps (a pinned instance of this checkout's
object); the global service demo/echo has alpha's endpoint and three of beta's. Endpoint churn
leaves its slots out of id order, then the agent restarts: its first build sees only the own
cell (beta is still connecting), beta's backends arrive a moment later. After the resync the
maps must equal their state before the restart, read back both by `LbMaps.dump()` and by
`bpftool map dump`, and the restarted agent must not have written a single entry.
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address
from typing import Any

from bpf.layout import IPPROTO_TCP
from bpf.lbmaps import MAP_SHAPES
from bpf.lbstate import Frontend, LbDiff
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
from certs import Role
from meshcore.client import MeshClient
from nodeagent.agent import Agent
from tests.conftest import Pki, wait_for
from tests.meshapi.helpers import endpoint
from tests.nodeagent.conftest import Mesh, agent_config

FRONTEND = Frontend(IPv4Address("10.96.0.10"), 80, IPPROTO_TCP)  # demo/echo in the mesh fixture


class RecordingMaps(PinnedLbMaps):
    """The real pinned maps, keeping every diff the agent applied (to show what it wrote)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[LbDiff] = []

    def apply(self, diff: LbDiff) -> None:
        self.applied.append(diff)
        super().apply(diff)


def bpftool_dump(loader: SockLbLoader) -> dict[str, Any]:
    """Every LB map as `bpftool -j map dump pinned` shows it (an independent reader)."""
    dumps = {}
    for name in sorted(MAP_SHAPES):
        shown = subprocess.run(
            ["bpftool", "-j", "map", "dump", "pinned", str(loader.map_path(name))],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        entries = json.loads(shown or "[]")
        dumps[name] = sorted(entries, key=lambda e: json.dumps(e, sort_keys=True))
    return dumps


def slots(agent: Agent) -> tuple[int, ...]:
    entry = agent.maps.landed.services.get(FRONTEND)
    return entry.backend_ids if entry is not None else ()


def resynced(agent: Agent, backends: int) -> bool:
    beta = agent.watchers.get("beta")
    return (
        agent.ready()[0]
        and agent.reconciler.deletes_allowed
        and beta is not None
        and beta.synced_once
        and agent.reconciler.pending == 0
        and len(slots(agent)) == backends
    )


async def test_restart_with_a_peer_backed_service_rewrites_no_slot(
    pki: Pki, mesh: Mesh, loader: SockLbLoader
) -> None:
    loader.load()
    opened: list[RecordingMaps] = []
    started: list[Agent] = []

    async def start() -> tuple[Agent, RecordingMaps]:
        maps = RecordingMaps(loader.maps_dir)
        opened.append(maps)
        agent = Agent(agent_config(pki, mesh), maps=maps)
        started.append(agent)
        await agent.start()
        return agent, maps

    try:
        first, first_maps = await start()
        await wait_for(lambda: resynced(first, 4), timeout=20, what="alpha + beta's three")
        # Churn in beta: one endpoint goes, another comes; the slots leave id order.
        async with MeshClient(mesh.beta.address, pki.tls("beta", Role.ADMIN)) as admin:
            await admin.write(puts=[endpoint("beta", 4)], deletes=[endpoint("beta", 1).key()])
        gone = IPv4Address("10.2.0.2")  # endpoint("beta", 1)
        await wait_for(
            lambda: (
                resynced(first, 4)
                and all(first.maps.landed.backends[b].address != gone for b in slots(first))
            ),
            timeout=20,
            what="the churn in the maps",
        )
        before = slots(first)
        assert before != tuple(sorted(before)), "the churn left the slots in id order"
        dump, shown = first_maps.dump(), bpftool_dump(loader)
        await first.stop()  # stop is not remove: the maps stay
        first_maps.close()

        second, maps = await start()
        await wait_for(lambda: resynced(second, 4), timeout=20, what="the restarted agent")
        rounds = second.stats.rounds
        await wait_for(lambda: second.stats.rounds >= rounds + 10, what="ten more rounds")
        assert resynced(second, 4)

        assert [d for d in maps.applied if len(d)] == []  # not one entry written
        assert slots(second) == before
        assert maps.dump() == dump
        assert bpftool_dump(loader) == shown
    finally:
        for agent in started:
            await agent.stop()  # safe twice
        for opened_maps in opened:
            opened_maps.close()  # idempotent
