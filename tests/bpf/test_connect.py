"""End to end on this kernel: a connect() to a VIP from the test cgroup reaches a backend.

The VIP is a loopback address (127.200.0.1) and the backend listens on 127.0.0.1, so even a
failed rewrite could never send a packet beyond loopback.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bpf.layout import (
    BACKENDS_MAP,
    IPPROTO_TCP,
    SERVICES_MAP,
    Lb4Backend,
    Lb4Key,
    Lb4Service,
    pack_backend_id,
)
from bpf.libbpf import check_syscall, lib
from bpf.loader import SockLbLoader
from tests.bpf.conftest import run_in_cgroup

VIP = IPv4Address("127.200.0.1")


def map_put(path: Path, key: bytes, value: bytes) -> None:
    fd = check_syscall("bpf_obj_get", lib.bpf_obj_get(bytes(path)))
    try:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        check_syscall("bpf_map_update_elem", lib.bpf_map_update_elem(fd, k, v, 0))
    finally:
        os.close(fd)


@pytest.fixture
def backend() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers every connection with 'backend'."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"backend")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        srv.close()


CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
print(s.getpeername()[0], s.getpeername()[1], s.recv(64).decode())
"""


def test_connect_to_vip_is_rewritten_only_inside_the_cgroup(
    loader: SockLbLoader, cgroup: Path, backend: int
) -> None:
    loader.attach(cgroup)
    map_put(loader.map_path(BACKENDS_MAP), pack_backend_id(1),
            Lb4Backend(IPv4Address("127.0.0.1"), backend, IPPROTO_TCP).pack())  # fmt: skip
    map_put(loader.map_path(SERVICES_MAP), Lb4Key(VIP, 80, IPPROTO_TCP).pack(),
            Lb4Service(backend_id=0, count=1, rev_nat_id=1).pack())  # fmt: skip
    map_put(loader.map_path(SERVICES_MAP), Lb4Key(VIP, 80, IPPROTO_TCP, slot=1).pack(),
            Lb4Service(backend_id=1, count=0, rev_nat_id=1).pack())  # fmt: skip
    out = run_in_cgroup(cgroup, [sys.executable, "-c", CLIENT, str(VIP)])
    # The application sees the VIP it dialled (getpeername) and talks to the backend.
    assert out.split() == [str(VIP), "80", "backend"]
    # Outside the cgroup nothing is rewritten: nobody listens on the VIP itself.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((str(VIP), 80), timeout=5).close()


def test_vip_without_backends_refuses_at_once(loader: SockLbLoader, cgroup: Path) -> None:
    loader.attach(cgroup)
    map_put(loader.map_path(SERVICES_MAP), Lb4Key(VIP, 80, IPPROTO_TCP).pack(),
            Lb4Service(backend_id=0, count=0, rev_nat_id=1).pack())  # fmt: skip
    probe = (
        "import socket, sys\n"
        "try:\n    socket.create_connection((sys.argv[1], 80), timeout=5)\n"
        "except OSError as e:\n    print(type(e).__name__, e.errno)\n"
    )
    out = run_in_cgroup(cgroup, [sys.executable, "-c", probe, str(VIP)])
    assert out.split() == ["ConnectionRefusedError", "111"]
