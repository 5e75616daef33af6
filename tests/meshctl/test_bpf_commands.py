"""``meshctl bpf services`` on real pinned maps, checked against what ``bpftool`` reads from them.

The maps belong to a test instance of the real object (tests/bpf/conftest.py fixtures: loaded,
never attached, so no socket is ever rewritten); `PinnedLbMaps` writes a diff, bpftool writes the
deliberately broken entries (a second writer that shares no code with ours).
"""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bpf.layout import (
    BACKENDS_MAP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    REVERSE_NAT_MAP,
    SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
    SERVICES_MAP,
    Lb4Backend,
    Lb4Key,
    Lb4Service,
)
from bpf.lbstate import PROTO_NAMES, SCOPE_NAMES, Frontend, LbDiff, ServiceEntry
from bpf.loader import SockLbLoader
from bpf.pinned_maps import PinnedLbMaps
from meshctl.cli import cli

# The BPF fixtures (compiled object, unique instance, loader that unpins on teardown).

Row = tuple[str, int, int, int, int | None, int, tuple[tuple[int, int, str, int, int, int], ...]]


def _backend(i: int) -> Lb4Backend:
    cell = 1 if i <= 4 else 2
    return Lb4Backend(IPv4Address(f"10.10.{cell}.{i}"), 8000 + i, IPPROTO_TCP, cell_id=cell)


BACKENDS = {i: _backend(i) for i in range(1, 7)} | {
    7: Lb4Backend(IPv4Address("10.10.2.7"), 53, IPPROTO_UDP, cell_id=2)
}
SERVICES = {
    Frontend(IPv4Address("127.200.9.1"), 80, IPPROTO_TCP): ServiceEntry(1, (1, 2, 5)),
    Frontend(IPv4Address("127.200.9.2"), 443, IPPROTO_TCP, SCOPE_INTERNAL): ServiceEntry(
        2, (3, 4, 6)
    ),
    Frontend(IPv4Address("127.200.9.3"), 53, IPPROTO_UDP): ServiceEntry(3, (7,)),
}


def meshctl(*args: str) -> Result:
    return CliRunner().invoke(cli, ["bpf", "services", *args])


def bpftool_dump(maps_dir: Path, name: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["bpftool", "map", "dump", "pinned", str(maps_dir / name), "-j"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


def bpftool_update(maps_dir: Path, name: str, key: bytes, value: bytes) -> None:
    subprocess.run(
        ["bpftool", "map", "update", "pinned", str(maps_dir / name),
         "key", "hex", *key.hex(" ").split(), "value", "hex", *value.hex(" ").split()],
        check=True,
        capture_output=True,
    )  # fmt: skip


def raw(entry: dict[str, Any], part: str) -> bytes:
    return bytes(int(b, 16) for b in entry[part])


def be_field(value: int, size: int) -> bytes:
    """bpftool prints a __be32/__be16 field as the host-order integer of its raw bytes."""
    return value.to_bytes(size, sys.byteorder)


def rows_from_bpftool(maps_dir: Path) -> list[Row]:
    backends: dict[int, tuple[str, int, int, int]] = {}
    for e in bpftool_dump(maps_dir, BACKENDS_MAP):
        v = e["formatted"]["value"]
        address = IPv4Address(be_field(v["address"], 4))
        assert raw(e, "value")[:4] == address.packed  # the decoding above is bpftool's
        backends[e["formatted"]["key"]] = (
            str(address),
            int.from_bytes(be_field(v["port"], 2), "big"),
            v["proto"],
            v["cell_id"],
        )
    masters: dict[tuple[str, int, int, int], tuple[int, int]] = {}
    slots: dict[tuple[str, int, int, int], dict[int, int]] = {}
    for e in bpftool_dump(maps_dir, SERVICES_MAP):
        k, v = e["formatted"]["key"], e["formatted"]["value"]
        fe = (
            str(IPv4Address(be_field(k["address"], 4))),
            int.from_bytes(be_field(k["dport"], 2), "big"),
            k["proto"],
            k["scope"],
        )
        assert raw(e, "key")[:6] == IPv4Address(fe[0]).packed + fe[1].to_bytes(2, "big")
        if k["slot"] == 0:
            masters[fe] = (v["count"], v["rev_nat_id"])
        else:
            slots.setdefault(fe, {})[k["slot"]] = v["backend_id"]
    rows: list[Row] = []
    for fe in sorted(masters, key=lambda f: (IPv4Address(f[0]), *f[1:])):
        count, rev_nat_id = masters[fe]
        shown = tuple(
            (slot, bid, *backends[bid]) for slot, bid in sorted(slots.get(fe, {}).items())
        )
        rows.append((*fe, count, rev_nat_id, shown))
    return rows


def rows_from_meshctl(doc: dict[str, Any]) -> list[Row]:
    protos = {name: num for num, name in PROTO_NAMES.items()}
    scopes = {name: num for num, name in SCOPE_NAMES.items()}
    rows: list[Row] = []
    for svc in doc["services"]:
        assert all(s["state"] == "ok" for s in svc["slots"])
        shown = tuple(
            (
                s["slot"],
                s["backend_id"],
                s["backend"]["address"],
                s["backend"]["port"],
                protos[s["backend"]["proto"]],
                s["backend"]["cell_id"],
            )
            for s in svc["slots"]
        )
        row = (svc["vip"], svc["port"], protos[svc["proto"]], scopes[svc["scope"]])
        rows.append((*row, svc["count"], svc["rev_nat_id"], shown))
    return rows


def rows_from_diff() -> list[Row]:
    rows: list[Row] = []
    for fe in sorted(SERVICES):
        entry = SERVICES[fe]
        shown = tuple(
            (slot, bid, str(b.address), b.port, b.proto, b.cell_id)
            for slot, bid in enumerate(entry.backend_ids, start=1)
            for b in [BACKENDS[bid]]
        )
        rows.append(
            (str(fe.address), fe.port, fe.proto, fe.scope, len(shown), entry.rev_nat_id, shown)
        )
    return rows


@pytest.fixture
def maps_dir(loader: SockLbLoader) -> Path:
    loader.load()
    loader.close()  # the pins keep the maps; the command must not need this process's fds
    return loader.maps_dir


def test_json_agrees_with_bpftool(maps_dir: Path) -> None:
    with PinnedLbMaps(maps_dir) as maps:
        maps.apply(LbDiff(backends=dict(BACKENDS), services=dict(SERVICES)))

    result = meshctl("--pin-dir", str(maps_dir), "-o", "json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["maps_dir"] == str(maps_dir)
    assert rows_from_meshctl(doc) == rows_from_bpftool(maps_dir) == rows_from_diff()
    first = doc["services"][0]
    assert first["rev_nat"] == {"address": "127.200.9.1", "port": 80}
    assert first["master"] is True
    assert first["flags"] == 0
    # Stable: the same maps give the same text.
    assert meshctl("--pin-dir", str(maps_dir), "-o", "json").stdout == result.stdout


def test_table_shows_every_frontend_and_backend(maps_dir: Path) -> None:
    with PinnedLbMaps(maps_dir) as maps:
        maps.apply(LbDiff(backends=dict(BACKENDS), services=dict(SERVICES)))

    # The instance directory is accepted too.
    result = meshctl("--pin-dir", str(maps_dir.parent))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "FRONTEND", "SCOPE", "REV-NAT", "COUNT", "SLOT", "BACKEND-ID", "BACKEND", "CELL", "NOTE",
    ]  # fmt: skip
    assert lines[1].split() == [
        "127.200.9.1:80/tcp", "external", "1", "3", "1", "1", "10.10.1.1:8001/tcp", "1",
    ]  # fmt: skip
    assert lines[2].split() == ["2", "2", "10.10.1.2:8002/tcp", "1"]
    assert lines[3].split() == ["3", "5", "10.10.2.5:8005/tcp", "2"]
    assert lines[4].split()[:4] == ["127.200.9.2:443/tcp", "internal", "2", "3"]
    assert lines[7].split() == [
        "127.200.9.3:53/udp", "external", "3", "1", "1", "7", "10.10.2.7:53/udp", "2",
    ]  # fmt: skip
    assert len(lines) == 8


def test_inconsistent_maps_are_shown_not_fatal(maps_dir: Path) -> None:
    vip = IPv4Address("127.200.9.9")
    tcp = (vip, 80, IPPROTO_TCP, SCOPE_EXTERNAL)
    entries = [
        # count 3: slot 1 fine, slot 2 missing, slot 3 an unknown backend, slot 5 stale.
        (Lb4Key(*tcp, slot=0), Lb4Service(0, 3, 9)),
        (Lb4Key(*tcp, slot=1), Lb4Service(1, 0, 0)),
        (Lb4Key(*tcp, slot=3), Lb4Service(99, 0, 0)),
        (Lb4Key(*tcp, slot=5), Lb4Service(1, 0, 0)),
        # slots without a master entry.
        (Lb4Key(vip, 81, IPPROTO_TCP, slot=1), Lb4Service(1, 0, 0)),
        # a master with no backends.
        (Lb4Key(vip, 82, IPPROTO_TCP, slot=0), Lb4Service(0, 0, 10)),
    ]
    bpftool_update(maps_dir, BACKENDS_MAP, (1).to_bytes(4, sys.byteorder), BACKENDS[1].pack())
    for key, value in entries:
        bpftool_update(maps_dir, SERVICES_MAP, key.pack(), value.pack())

    result = meshctl("--pin-dir", str(maps_dir), "-o", "json")

    assert result.exit_code == 0, result.output
    services = json.loads(result.stdout)["services"]
    assert [(s["port"], s["master"], s["count"], s["rev_nat"]) for s in services] == [
        (80, True, 3, None),
        (81, False, None, None),
        (82, True, 0, None),
    ]
    assert [(s["slot"], s["state"], s["backend_id"]) for s in services[0]["slots"]] == [
        (1, "ok", 1),
        (2, "missing-slot", None),
        (3, "unknown-backend", 99),
        (5, "stale", 1),
    ]
    assert services[0]["slots"][2]["backend"] is None
    assert [(s["slot"], s["state"]) for s in services[1]["slots"]] == [(1, "no-master")]
    assert services[2]["slots"] == []

    table = meshctl("--pin-dir", str(maps_dir))
    assert table.exit_code == 0, table.output
    assert "slot missing" in table.stdout
    assert "unknown backend id" in table.stdout
    assert "stale (past count)" in table.stdout
    assert "no master entry" in table.stdout
    assert "no backends" in table.stdout


def test_empty_maps(maps_dir: Path) -> None:
    table = meshctl("--pin-dir", str(maps_dir))
    assert table.exit_code == 0
    assert table.stdout == ""
    assert f"No services in {maps_dir}." in table.output

    doc = json.loads(meshctl("--pin-dir", str(maps_dir), "-o", "json").stdout)
    assert doc == {"maps_dir": str(maps_dir), "services": []}


def test_missing_dir_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "maps"

    result = meshctl("--pin-dir", str(missing))

    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {missing}: no such directory (is the datapath loaded?)"
    )
    assert "Traceback" not in result.output


def test_dir_without_pins_is_a_one_line_error(tmp_path: Path) -> None:
    result = meshctl("--pin-dir", str(tmp_path), "-o", "json")

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert str(tmp_path / SERVICES_MAP) in lines[0]
    assert "no pinned map" in lines[0]


def test_file_that_is_not_a_pin_is_a_one_line_error(tmp_path: Path) -> None:
    for name in (SERVICES_MAP, BACKENDS_MAP, REVERSE_NAT_MAP):
        (tmp_path / name).write_text("not a map")

    result = meshctl("--pin-dir", str(tmp_path))

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert str(tmp_path) in lines[0]
