"""The socket LB on this kernel, programmed through `PinnedLbMaps`: UDP, spread, removal, restart.

Each test attaches the real programs to a private cgroup, programs one service with an `LbDiff`
and measures from ONE client subprocess moved into that cgroup. Backends are servers in this
process (one thread per group) on 127.0.0.1 that answer with their own name; every VIP is a
distinct 127.200.0.x address, so all traffic stays on loopback even if a rewrite failed.
"""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from bpf.layout import IPPROTO_TCP, IPPROTO_UDP, PROGRAMS, Lb4Backend
from bpf.lbstate import Frontend, LbDiff, ServiceEntry
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
from tests.bpf.conftest import REPO, attachments, run_in_cgroup

LOCALHOST = IPv4Address("127.0.0.1")


# --- backends --------------------------------------------------------------------------------


class BackendGroup:
    """Named servers on 127.0.0.1 (ephemeral ports), all served by one thread.

    A TCP backend writes its name and closes each connection; a UDP backend answers every
    datagram with its name. `hits` counts what each backend served, counted before the reply
    goes out, so a client that got its reply and exited is always counted.
    """

    def __init__(self, proto: int, names: tuple[str, ...]) -> None:
        self.proto = proto
        self.ports: dict[str, int] = {}
        self._hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._socks: list[socket.socket] = [self._wake_r, self._wake_w]
        self._thread = threading.Thread(target=self._serve, name="backends", daemon=True)
        try:
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            kind = socket.SOCK_STREAM if proto == IPPROTO_TCP else socket.SOCK_DGRAM
            for name in names:
                sock = socket.socket(socket.AF_INET, kind)
                self._socks.append(sock)
                sock.bind((str(LOCALHOST), 0))
                if kind == socket.SOCK_STREAM:
                    sock.listen(128)
                sock.setblocking(False)
                self._sel.register(sock, selectors.EVENT_READ, name)
                self.ports[name] = sock.getsockname()[1]
            self._thread.start()
        except BaseException:
            self.close()
            raise

    @property
    def hits(self) -> Counter[str]:
        with self._lock:
            return Counter(self._hits)

    def backend(self, name: str) -> Lb4Backend:
        return Lb4Backend(LOCALHOST, self.ports[name], self.proto)

    def _serve(self) -> None:
        try:
            while True:
                for key, _ in self._sel.select():
                    if key.data is None:
                        return  # woken by close()
                    self._answer(key.data, key.fileobj)  # type: ignore[arg-type]
        except BaseException as e:
            self._error = e

    def _answer(self, name: str, sock: socket.socket) -> None:
        reply = name.encode()
        try:
            if sock.type == socket.SOCK_STREAM:
                conn, _ = sock.accept()
                with self._lock:
                    self._hits[name] += 1
                with conn:
                    conn.setblocking(True)
                    conn.sendall(reply)
            else:
                _, peer = sock.recvfrom(2048)
                with self._lock:
                    self._hits[name] += 1
                sock.sendto(reply, peer)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(5)
        self._sel.close()
        for sock in self._socks:
            sock.close()
        assert not self._thread.is_alive(), "backend thread did not stop"
        if self._error is not None:
            raise AssertionError("backend thread failed") from self._error


ServeBackends = Callable[[int, tuple[str, ...]], BackendGroup]


@pytest.fixture
def serve() -> Iterator[ServeBackends]:
    """`serve(proto, names)` starts a `BackendGroup`; every group is closed at teardown."""
    groups: list[BackendGroup] = []

    def start(proto: int, names: tuple[str, ...]) -> BackendGroup:
        group = BackendGroup(proto, names)
        groups.append(group)
        return group

    try:
        yield start
    finally:
        errors = []
        for group in groups:
            try:
                group.close()
            except AssertionError as e:
                errors.append(e)
        if errors:
            raise errors[0]


def service_diff(
    group: BackendGroup, frontend: Frontend, rev_nat_id: int, ids: dict[int, str]
) -> LbDiff:
    """One service over the named backends of group, keyed by the given backend ids."""
    return LbDiff(
        backends={bid: group.backend(name) for bid, name in ids.items()},
        services={frontend: ServiceEntry(rev_nat_id, tuple(ids))},
    )


def client(cgroup: Path, script: str, *args: object, timeout: float = 10) -> Any:
    """Run a small client script in the cgroup; it prints one JSON value."""
    argv = [sys.executable, "-c", script, *(str(a) for a in args)]
    return json.loads(run_in_cgroup(cgroup, argv, timeout=timeout))


# --- client scripts (each one subprocess, one measurement) -----------------------------------

UDP_UNCONNECTED = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
data, source = s.recvfrom(64)
print(json.dumps({"reply": data.decode(), "source": list(source)}))
"""

UDP_CONNECTED = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"ping")
data = s.recv(64)
print(json.dumps({"reply": data.decode(), "peer": list(s.getpeername())}))
"""

TCP_COUNTS = """
import collections, json, socket, sys
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = collections.Counter()
for _ in range(n):
    with socket.create_connection((vip, port), timeout=5) as s:
        reply = b""
        while chunk := s.recv(64):
            reply += chunk
        counts[reply.decode()] += 1
print(json.dumps(counts))
"""

TCP_REFUSED = """
import json, socket, sys, time
start = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    result = None
except OSError as e:
    result = [type(e).__name__, e.errno]
print(json.dumps({"error": result, "seconds": time.monotonic() - start}))
"""

TCP_ONE = """
import json, socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    peer = list(s.getpeername())
    reply = b""
    while chunk := s.recv(64):
        reply += chunk
print(json.dumps({"reply": reply.decode(), "peer": peer}))
"""

# The "agent" of test_pins_survive_the_loader_process: load, attach, program, close, exit.
AGENT = """
import sys
from ipaddress import IPv4Address
from pathlib import Path
from bpf.layout import IPPROTO_TCP, Lb4Backend
from bpf.lbstate import Frontend, LbDiff, ServiceEntry
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
obj, instance, cgroup, vip, port = sys.argv[1:]
loader = SockLbLoader(object_path=Path(obj), instance=instance)
loader.attach(Path(cgroup))
with PinnedLbMaps(loader.maps_dir) as maps:
    maps.apply(LbDiff(
        backends={1: Lb4Backend(IPv4Address("127.0.0.1"), int(port), IPPROTO_TCP)},
        services={Frontend(IPv4Address(vip), 80, IPPROTO_TCP): ServiceEntry(7, (1,))},
    ))
loader.close()
"""


# --- tests -----------------------------------------------------------------------------------


def test_unconnected_udp_is_translated_both_ways(
    loader: SockLbLoader, cgroup: Path, serve: ServeBackends
) -> None:
    vip = IPv4Address("127.200.0.2")
    dns = serve(IPPROTO_UDP, ("dns",))
    loader.attach(cgroup)
    with PinnedLbMaps(loader.maps_dir) as maps:
        maps.apply(service_diff(dns, Frontend(vip, 53, IPPROTO_UDP), 2, {1: "dns"}))
    out = client(cgroup, UDP_UNCONNECTED, vip, 53)
    # sendmsg4 sent the datagram to the backend; recvmsg4 shows its reply as from the VIP.
    assert out == {"reply": "dns", "source": [str(vip), 53]}
    assert dns.hits == {"dns": 1}


def test_connected_udp_is_translated_and_peer_is_the_vip(
    loader: SockLbLoader, cgroup: Path, serve: ServeBackends
) -> None:
    vip = IPv4Address("127.200.0.3")
    dns = serve(IPPROTO_UDP, ("dns",))
    loader.attach(cgroup)
    with PinnedLbMaps(loader.maps_dir) as maps:
        maps.apply(service_diff(dns, Frontend(vip, 53, IPPROTO_UDP), 3, {1: "dns"}))
    out = client(cgroup, UDP_CONNECTED, vip, 53)
    assert out == {"reply": "dns", "peer": [str(vip), 53]}
    assert dns.hits == {"dns": 1}


def test_connections_spread_over_every_backend(
    loader: SockLbLoader, cgroup: Path, serve: ServeBackends
) -> None:
    """400 connections over 4 backends: every backend gets at least 50.

    The slot is drawn with bpf_get_prandom_u32(), so each backend's count is Binomial(400, 1/4):
    mean 100, sd = sqrt(400 * 1/4 * 3/4) ≈ 8.7. 50 is ≈ 5.8 sd below the mean, so a fair
    selector fails this bound with probability < 1e-8 per backend; a selector that skips a
    slot, or always takes the same one, fails it for sure.
    """
    vip = IPv4Address("127.200.0.4")
    names = ("b1", "b2", "b3", "b4")
    group = serve(IPPROTO_TCP, names)
    loader.attach(cgroup)
    with PinnedLbMaps(loader.maps_dir) as maps:
        maps.apply(
            service_diff(group, Frontend(vip, 80, IPPROTO_TCP), 4, dict(enumerate(names, 1)))
        )
    counts = client(cgroup, TCP_COUNTS, vip, 80, 400)
    assert sorted(counts) == sorted(names)
    assert sum(counts.values()) == 400
    assert all(counts[name] >= 50 for name in names), counts
    assert group.hits == counts


def test_removed_backend_gets_nothing_and_no_backends_refuses(
    loader: SockLbLoader, cgroup: Path, serve: ServeBackends
) -> None:
    vip = IPv4Address("127.200.0.5")
    fe = Frontend(vip, 80, IPPROTO_TCP)
    group = serve(IPPROTO_TCP, ("b1", "b2", "b3"))
    loader.attach(cgroup)
    with PinnedLbMaps(loader.maps_dir) as maps:
        maps.apply(service_diff(group, fe, 5, {1: "b1", 2: "b2", 3: "b3"}))
        assert sorted(client(cgroup, TCP_COUNTS, vip, 80, 30)) == ["b1", "b2", "b3"]
        before = group.hits

        # Remove b2 (slot 2 now holds b3, slot 3 is swept): 200 connections never reach it.
        maps.apply(LbDiff(backends={2: None}, services={fe: ServiceEntry(5, (1, 3))}))
        counts = client(cgroup, TCP_COUNTS, vip, 80, 200)
        assert sorted(counts) == ["b1", "b3"], counts
        assert sum(counts.values()) == 200
        assert group.hits - before == counts
        assert "count=2 backends=[1,3]" in maps.dump()

        # No backends left: connect() fails with ECONNREFUSED at once, not after a timeout.
        maps.apply(LbDiff(backends={1: None, 3: None}, services={fe: ServiceEntry(5, ())}))
        out = client(cgroup, TCP_REFUSED, vip, 80)
        assert out["error"] == ["ConnectionRefusedError", 111]
        assert out["seconds"] < 0.5
        assert "count=0 backends=[]" in maps.dump()


def test_pins_survive_the_loader_process(
    sock_lb_object: Path,
    instance: str,
    loader: SockLbLoader,
    cgroup: Path,
    serve: ServeBackends,
) -> None:
    vip = IPv4Address("127.200.0.6")
    group = serve(IPPROTO_TCP, ("web",))
    port = group.ports["web"]
    hooks = sorted(p.attach_name for p in PROGRAMS)
    # `loader` shares `instance` with the agent below, so its teardown unpins what it left.
    assert loader.instance == instance
    agent = [sys.executable, "-c", AGENT, str(sock_lb_object), instance, str(cgroup), str(vip)]
    subprocess.run(
        [*agent, str(port)], cwd=REPO, check=True, capture_output=True, text=True, timeout=20
    )

    # The agent has exited: its pinned links and maps keep the datapath going.
    assert sorted(attachments(cgroup)) == hooks
    assert client(cgroup, TCP_ONE, vip, 80) == {"reply": "web", "peer": [str(vip), 80]}

    # A restarted agent re-attaches through the pins: one attachment per hook, still working.
    loader.attach(cgroup)
    assert sorted(attachments(cgroup)) == hooks
    assert len(hooks) == len(PROGRAMS) == 4
    assert client(cgroup, TCP_ONE, vip, 80) == {"reply": "web", "peer": [str(vip), 80]}
    assert group.hits == {"web": 2}

    # ...and reads back the service the first agent wrote.
    with PinnedLbMaps(loader.maps_dir) as maps:
        state = maps.restore()
    assert state.services == {Frontend(vip, 80, IPPROTO_TCP): ServiceEntry(7, (1,))}
    assert state.backends == {1: Lb4Backend(LOCALHOST, port, IPPROTO_TCP)}
