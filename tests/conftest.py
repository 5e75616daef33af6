"""Fixtures shared by the suite: a real mesh PKI, real etcd processes, in-process meshapi.

Everything a fixture starts is stopped by its finalizer, also when the test fails.
"""

from __future__ import annotations

import asyncio
import asyncio.events as asyncio_events
import gc
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import pytest_timeout  # type: ignore[import-untyped]

from bpf.loader import SockLbLoader
from certs import Role, create_ca, issue_certificate
from meshapi.app import MeshApiApp, MeshApiConfig
from meshcore.localetcd import LocalEtcd

REPO = Path(__file__).resolve().parents[1]
TRUST_DOMAIN = "mesh.test"


def _await_chain(awaitable: object) -> list[str]:
    """Where a suspended coroutine waits: its frame, the frame of what it awaits, and so on."""
    lines: list[str] = []
    while awaitable is not None:
        frame = next(
            (
                getattr(awaitable, a)
                for a in ("cr_frame", "ag_frame", "gi_frame")
                if hasattr(awaitable, a)
            ),
            None,
        )
        if frame is None and type(awaitable).__name__ == "async_generator_asend":
            # An async generator's __anext__: follow it into the generator (no public link).
            gens = [r for r in gc.get_referents(awaitable) if hasattr(r, "ag_frame")]
            if gens:
                awaitable = gens[0]
                continue
        if frame is None:
            lines.append(f"  awaiting {awaitable!r}"[:300])
            break
        lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaitable = next(
            (
                getattr(awaitable, a)
                for a in ("cr_await", "ag_await", "gi_yieldfrom")
                if hasattr(awaitable, a)
            ),
            None,
        )
    return lines


def _dump_stacks_and_tasks(terminal: Any) -> None:
    """pytest-timeout's thread dump, plus every pending asyncio task of the main thread's loop
    with the chain of awaits it is suspended in: a test that hangs in an ``await`` shows where."""
    _thread_dump(terminal)
    loop = asyncio_events._get_running_loop()
    if loop is None:
        return
    for task in asyncio.all_tasks(loop):
        terminal.sep("~", title=f"asyncio task {task.get_name()}")
        terminal.write("\n".join(_await_chain(task.get_coro())) + "\n")


_thread_dump = pytest_timeout.dump_stacks
pytest_timeout.dump_stacks = _dump_stacks_and_tasks


@dataclass(frozen=True)
class Pki:
    """A mesh CA and a TLS directory per (cell, role[, node])."""

    root: Path
    ca_dir: Path

    def tls(self, cell: str, role: Role, *, node: str | None = None) -> Path:
        out = self.root / f"{cell}-{role}{'-' + node if node else ''}"
        if not out.exists():
            issue_certificate(ca_dir=self.ca_dir, cell=cell, role=role, out_dir=out, node=node)
        return out


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    # Backdated, so the same CA can also issue a certificate that has already expired.
    create_ca(
        trust_domain=TRUST_DOMAIN, out_dir=root / "ca", now=datetime.now(UTC) - timedelta(days=30)
    )
    return Pki(root, root / "ca")


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second CA with the same trust domain: its certificates must be refused."""
    root = tmp_path_factory.mktemp("foreign-pki")
    create_ca(trust_domain=TRUST_DOMAIN, out_dir=root / "ca")
    return Pki(root, root / "ca")


@pytest.fixture(scope="session")
def expired_admin_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("expired") / "alpha-admin"
    issue_certificate(
        ca_dir=pki.ca_dir,
        cell="alpha",
        role=Role.ADMIN,
        out_dir=out,
        days=1,
        now=datetime.now(UTC) - timedelta(days=10),
    )
    return out


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[[str], LocalEtcd]]:
    """Start real etcd processes on free loopback ports; all are stopped at the end."""
    started: list[LocalEtcd] = []

    def start(name: str = "etcd") -> LocalEtcd:
        etcd = LocalEtcd(data_dir=tmp_path / name / "data")
        started.append(etcd)
        etcd.start()
        return etcd

    yield start
    for etcd in started:
        etcd.stop()
        shutil.rmtree(etcd.data_dir, ignore_errors=True)


@pytest.fixture
def etcd(etcd_factory: Callable[[str], LocalEtcd]) -> LocalEtcd:
    return etcd_factory("etcd")


CELL_CIDRS = {
    "alpha": ("10.1.0.0/16", "192.168.1.0/24"),
    "beta": ("10.2.0.0/16", "192.168.2.0/24"),
    "gamma": ("10.3.0.0/16", "192.168.3.0/24"),
}
CELL_IDS = {"alpha": 1, "beta": 2, "gamma": 3}

MeshApiFactory = Callable[..., Awaitable[MeshApiApp]]


@pytest.fixture
async def meshapi_factory(pki: Pki) -> AsyncIterator[MeshApiFactory]:
    """Start in-process meshapi servers (real gRPC + mTLS + etcd); all stopped at the end."""
    running: list[MeshApiApp] = []

    async def start(
        cell: str, etcd: LocalEtcd, *, port: int = 0, history_events: int = 100_000
    ) -> MeshApiApp:
        pod, nodes = CELL_CIDRS[cell]
        app = MeshApiApp(
            MeshApiConfig(
                cell=cell,
                cell_id=CELL_IDS[cell],
                pod_cidrs=(ip_network(pod),),
                node_cidrs=(ip_network(nodes),),
                etcd_endpoints=(etcd.endpoint,),
                listen=f"127.0.0.1:{port}",
                tls_dir=pki.tls(cell, Role.MESHAPI),
                http="127.0.0.1:0",
                heartbeat_interval=0.5,
                history_events=history_events,
            )
        )
        running.append(app)
        await app.start()
        await app.wait_ready()
        return app

    yield start
    for app in running:
        await app.stop()


async def wait_for(
    condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait on a condition with a deadline (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# --- the datapath object and a pinned loader instance (bpf, meshctl, nodeagent tests) ---


@pytest.fixture(scope="session")
def sock_lb_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The datapath built from this checkout's source (not a possibly stale bpf/sock_lb.o)."""
    out = tmp_path_factory.mktemp("bpf") / "sock_lb.o"
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
         "-c", str(REPO / "bpf" / "sock_lb.c"), "-o", str(out)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return out


@pytest.fixture
def instance() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def loader(sock_lb_object: Path, instance: str) -> Iterator[SockLbLoader]:
    ld = SockLbLoader(object_path=sock_lb_object, instance=instance)
    try:
        yield ld
    finally:
        ld.unpin()


# --- a private cgroup v2 directory (bpf and nodeagent tests) -------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")


@pytest.fixture
def cgroup() -> Iterator[Path]:
    path = CGROUP_ROOT / f"cellmesh-test-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    try:
        yield path
    finally:
        # Processes a test moved in have exited; rmdir fails loudly if one is left.
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                procs = (path / "cgroup.procs").read_text().split()
                for pid in procs:
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
        assert not path.exists(), f"{path} could not be removed"


# --- console scripts as an operator runs them ------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path: (status, body); (0, "") while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def assert_refused(args: list[str], message: str) -> None:
    """The command exits 2 (a usage error) with ``message`` on stderr and no traceback."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
