"""A peer's meshapi that comes back is resynced within a second of its /readyz turning green,
however far the reconnect backoff had grown; and a watcher's errors carry their true class.

Real etcds, real meshapis over mTLS (in process, restarted on the same port), a real agent with
the real default backoff (`BACKOFF`, capped at 5 s plus jitter). Nothing is time-compressed:
beta's meshapi stays down until the agent's watcher has begun a wait at the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certs import Role, issue_certificate
from meshcore.client import ErrorClass, MeshClient
from meshcore.watch.listwatch import BACKOFF
from nodeagent.http import peer_status
from nodeagent.peers import PeerState, PeerTarget, PeerWatcher
from tests.conftest import Pki, http_get, wait_for
from tests.nodeagent.conftest import AgentFactory, Mesh

RESYNC_LIMIT = 1.0


async def test_resync_within_a_second_of_readyz_after_backoff_reached_its_cap(
    mesh: Mesh, agent_factory: AgentFactory
) -> None:
    agent = await agent_factory(backoff=BACKOFF)
    await wait_for(
        lambda: "beta" in agent.watchers and agent.watchers["beta"].state is PeerState.READY,
        timeout=20,
        what="beta ready",
    )
    w = agent.watchers["beta"]
    await mesh.beta.stop()
    # The watcher's failure count indexes the backoff; once it is past the last delay, the
    # watcher has just begun a wait at the cap (5-7.5 s with jitter).
    await wait_for(
        lambda: w.watcher is not None and w.watcher._attempt >= len(BACKOFF),
        timeout=30,
        what="the backoff to reach its cap",
    )
    assert w.state is not PeerState.READY

    readyz_green: list[float] = []
    peer_ready: list[float] = []

    async def watch_readyz() -> None:
        while True:
            app = mesh.beta.app
            if app is not None and app.http_port:
                status, _ = await asyncio.to_thread(http_get, app.http_port, "/readyz")
                if status == 200:
                    readyz_green.append(time.monotonic())
                    return
            await asyncio.sleep(0.01)

    async def watch_peer() -> None:
        await wait_for(lambda: w.state is PeerState.READY, timeout=30, what="beta ready again")
        peer_ready.append(time.monotonic())

    readyz_task = asyncio.create_task(watch_readyz())
    peer_task = asyncio.create_task(watch_peer())
    await mesh.beta.start()
    await asyncio.wait_for(asyncio.gather(readyz_task, peer_task), 30)
    resync = peer_ready[0] - readyz_green[0]
    print(f"resync after /readyz green: {resync:.3f} s")
    assert resync <= RESYNC_LIMIT, f"beta was ready {resync:.2f} s after its /readyz turned green"


async def test_refused_certificate_is_reported_with_its_cause(
    mesh: Mesh, agent_factory: AgentFactory, pki: Pki, tmp_path: Path
) -> None:
    expired = tmp_path / "expired-agent"
    issue_certificate(
        ca_dir=pki.ca_dir,
        cell="alpha",
        role=Role.AGENT,
        node="a1",
        out_dir=expired,
        days=1,
        now=datetime.now(UTC) - timedelta(days=10),
    )
    agent = await agent_factory(tls_dir=expired)
    await wait_for(
        lambda: agent.own.last_error_class is ErrorClass.TLS, timeout=20, what="a tls error"
    )
    status = peer_status(agent.own, agent.now())
    assert status["last_error_class"] == "tls"
    assert "refused this client's certificate in the TLS handshake" in status["last_error"]
    assert "expired at" in status["last_error"]
    assert "Socket closed" not in status["last_error"]


async def test_relist_is_reported_as_resume_not_as_a_connection_error(mesh: Mesh, pki: Pki) -> None:
    w = PeerWatcher(
        PeerTarget(cell="beta", cell_id=mesh.beta.id, address=mesh.beta.address),
        tls_dir=pki.tls("alpha", Role.AGENT, node="a1"),
        check_config=lambda cfg: None,
    )
    cache = w.cache
    async with MeshClient(mesh.beta.address, pki.tls("alpha", Role.AGENT, node="a1")) as client:
        cache.config = (await client.get_cell()).config
        w.watcher = w.make_watcher(client)
        # A resume point this store never had: beta answers "relist".
        w.watcher.revision, w.watcher.epoch = 10**9, "gone"
        task = asyncio.create_task(w.watcher.run())
        try:
            await asyncio.wait_for(w.watcher.synced.wait(), 10)
            assert w.watcher.stats.relists == 1
            assert w.evaluate() is PeerState.READY
            status = peer_status(w, time.monotonic())
            assert status["last_error_class"] == "resume"
            assert "relist" in status["last_error"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
