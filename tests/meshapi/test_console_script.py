"""The `meshapi` console script as an operator runs it: flags, health endpoints, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from certs import Role
from meshcore.localetcd import LocalEtcd, free_loopback_port
from tests.conftest import Pki, assert_refused, http_get

MESHAPI = str(Path(sys.executable).with_name("meshapi"))


def test_meshapi_process_serves_health_metrics_and_status(pki: Pki, etcd: LocalEtcd) -> None:
    grpc_port, http_port = free_loopback_port(), free_loopback_port()
    args = [
        MESHAPI, "--cell", "alpha", "--cell-id", "1", "--pod-cidr", "10.1.0.0/16",
        "--etcd", etcd.url, "--listen", f"127.0.0.1:{grpc_port}",
        "--tls-dir", str(pki.tls("alpha", Role.MESHAPI)), "--http", f"127.0.0.1:{http_port}",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if http_get(http_port, "/readyz") == (200, "ready\n"):
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "meshapi not ready"
            time.sleep(0.05)
        assert http_get(http_port, "/healthz") == (200, "ok\n")
        code, metrics = http_get(http_port, "/metrics")
        assert code == 200
        assert 'meshapi_records{kind="cells"} 1.0' in metrics
        status = json.loads(http_get(http_port, "/status")[1])
        assert status["cell"] == "alpha"
        assert status["ready"] is True
        assert "services" in status["synced_kinds"]
        # What the initial sync loaded is kept out of the full collections' way.
        deadline = time.monotonic() + 20
        while "meshapi_gc_frozen_objects 0.0" in http_get(http_port, "/metrics")[1]:
            assert time.monotonic() < deadline, "the heap was not frozen after the sync"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert proc.stdout is not None
    assert "Heap frozen after the initial sync" in proc.stdout.read().decode()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--cell-id", "300"], "300 is not in the range 1<=x<=255", id="cell-id-range"),
        pytest.param(["--pod-cidr", "10.1.0.1/16"], "has host bits set", id="cidr-host-bits"),
        pytest.param(["--etcd", "https://x"], "is not http://HOST:PORT", id="etcd-url"),
        pytest.param(["--listen", "nowhere"], "is not HOST:PORT", id="listen"),
        pytest.param(["--cell", "Alpha"], "cell", id="cell-name-uppercase"),
    ],
)
def test_bad_flags_are_refused_with_a_clear_message(
    pki: Pki, flags: list[str], message: str
) -> None:
    base = {
        "--cell": "alpha", "--cell-id": "1", "--pod-cidr": "10.1.0.0/16",
        "--etcd": "http://127.0.0.1:1", "--tls-dir": str(pki.tls("alpha", Role.MESHAPI)),
        "--listen": "127.0.0.1:0",
    }  # fmt: skip
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        base[flag] = value
    args = [MESHAPI] + [x for kv in base.items() for x in kv]
    assert_refused(args, message)
