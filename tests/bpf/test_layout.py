"""The Python layouts in ``bpf/layout.py`` against the compiled object's BTF, and round-trips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from bpf import layout
from bpf.layout import (
    Lb4Backend,
    Lb4Key,
    Lb4ReverseNat,
    Lb4Service,
    Lb4SkKey,
    Lb4SkValue,
)

BPF_DIR = Path(layout.__file__).parent
SOURCE = BPF_DIR / layout.OBJECT_SOURCE
INCLUDE = "/usr/include/x86_64-linux-gnu"


def _compile(out: Path, *defines: str) -> Path:
    clang = shutil.which("clang")
    assert clang is not None, "clang is installed by `make setup`"
    cmd = [clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", f"-I{INCLUDE}"]
    cmd += [f"-D{d}" for d in defines]
    subprocess.run([*cmd, "-c", str(SOURCE), "-o", str(out)], check=True, capture_output=True)
    return out


def _btf_structs(obj: Path) -> dict[str, dict[str, Any]]:
    bpftool = shutil.which("bpftool")
    assert bpftool is not None, "bpftool is installed by `make setup`"
    proc = subprocess.run(
        [bpftool, "btf", "dump", "file", str(obj), "-j"],
        check=True,
        capture_output=True,
        text=True,
    )
    types = json.loads(proc.stdout)["types"]
    return {t["name"]: t for t in types if t["kind"] == "STRUCT" and t["name"]}


@pytest.fixture(scope="module")
def btf_structs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    obj = _compile(tmp_path_factory.mktemp("bpf") / "sock_lb.o")
    return _btf_structs(obj)


@pytest.mark.parametrize("name", sorted(layout.FIELD_OFFSETS))
def test_btf_matches_documented_layout(name: str, btf_structs: dict[str, dict[str, Any]]) -> None:
    assert name in btf_structs, f"struct {name} missing from BTF"
    btf = btf_structs[name]
    assert btf["size"] == layout.STRUCT_SIZES[name]
    offsets = {}
    for member in btf["members"]:
        assert member["bits_offset"] % 8 == 0, f"{name}.{member['name']} is a bitfield"
        offsets[member["name"]] = member["bits_offset"] // 8
    assert offsets == layout.FIELD_OFFSETS[name]


def test_deterministic_build_compiles(tmp_path: Path) -> None:
    obj = _compile(tmp_path / "sock_lb_det.o", "CM_LB_DETERMINISTIC")
    assert set(_btf_structs(obj)) >= set(layout.STRUCT_SIZES)


def test_every_struct_has_a_python_class() -> None:
    assert {cls.C_NAME for cls in layout.LAYOUTS} == set(layout.FIELD_OFFSETS)


def test_map_and_program_names_are_in_the_source() -> None:
    text = SOURCE.read_text() + (BPF_DIR / "lb_maps.h").read_text()
    for map_name in layout.MAP_NAMES:
        assert f'}} {map_name} SEC(".maps")' in text
    for prog in layout.PROGRAMS:
        assert f'SEC("{prog.section}")\nint {prog.name}(' in text


VIP = IPv4Address("10.96.0.10")
BACKEND = IPv4Address("192.168.7.42")

ROUND_TRIPS = [
    pytest.param(Lb4Key(VIP, 53, layout.IPPROTO_UDP), id="key-master"),
    pytest.param(
        Lb4Key(VIP, 443, layout.IPPROTO_TCP, layout.SCOPE_INTERNAL, 65535), id="key-slot-max"
    ),
    pytest.param(Lb4Service(0, 3, 7), id="service-master"),
    pytest.param(Lb4Service(0xFFFFFFFF, 0, 0xFFFF, 0xFF), id="service-extremes"),
    pytest.param(Lb4Backend(BACKEND, 8080, layout.IPPROTO_TCP, 1, 9), id="backend"),
    pytest.param(Lb4Backend(IPv4Address("0.0.0.0"), 0, 0), id="backend-zero"),
    pytest.param(Lb4ReverseNat(VIP, 65535), id="revnat"),
    pytest.param(Lb4SkKey(0xDEADBEEFCAFEF00D, BACKEND, 8080), id="sk-key"),
    pytest.param(Lb4SkValue(VIP, 53, 7), id="sk-value"),
]


@pytest.mark.parametrize("value", ROUND_TRIPS)
def test_round_trip(value: Any) -> None:
    raw = value.pack()
    assert len(raw) == type(value).SIZE
    assert type(value).unpack(raw) == value


WIRE = [
    pytest.param(
        Lb4Key(VIP, 0x1234, layout.IPPROTO_TCP, 1, 0x0102),
        "lb4_key",
        {"address": VIP.packed, "dport": b"\x12\x34", "proto": b"\x06", "scope": b"\x01"},
        id="key",
    ),
    pytest.param(
        Lb4Backend(BACKEND, 0xABCD, layout.IPPROTO_UDP, 2, 5),
        "lb4_backend",
        {"address": BACKEND.packed, "port": b"\xab\xcd", "proto": b"\x11", "cell_id": b"\x05"},
        id="backend",
    ),
    pytest.param(
        Lb4SkKey(1, BACKEND, 0x0050),
        "lb4_sk_key",
        {"address": BACKEND.packed, "port": b"\x00\x50"},
        id="sk-key",
    ),
    pytest.param(
        Lb4SkValue(VIP, 0x0035, 9),
        "lb4_sk_value",
        {"address": VIP.packed, "port": b"\x00\x35"},
        id="sk-value",
    ),
    pytest.param(
        Lb4ReverseNat(VIP, 0x01BB),
        "lb4_reverse_nat",
        {"address": VIP.packed, "port": b"\x01\xbb", "pad": b"\x00\x00"},
        id="revnat",
    ),
]


@pytest.mark.parametrize(("value", "name", "expected"), WIRE)
def test_network_order_fields_land_at_documented_offsets(
    value: Any, name: str, expected: dict[str, bytes]
) -> None:
    raw = value.pack()
    offsets = layout.FIELD_OFFSETS[name]
    for field, want in expected.items():
        start = offsets[field]
        assert raw[start : start + len(want)] == want, field


def test_host_order_fields() -> None:
    raw = Lb4Service(0x01020304, 0x0506, 0x0708, 0x09).pack()
    offsets = layout.FIELD_OFFSETS["lb4_service"]
    assert int.from_bytes(raw[offsets["count"] : offsets["count"] + 2], sys.byteorder) == 0x0506
    assert raw[offsets["flags"]] == 0x09
    assert layout.unpack_backend_id(layout.pack_backend_id(262143)) == 262143
    assert layout.unpack_rev_nat_id(layout.pack_rev_nat_id(65535)) == 65535


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: Lb4Key(VIP, 65536, 6).pack(), id="port-too-big"),
        pytest.param(lambda: Lb4Backend(VIP, -1, 6).pack(), id="port-negative"),
        pytest.param(lambda: Lb4Key.unpack(b"\x00" * 11), id="short-buffer"),
    ],
)
def test_rejects_bad_input(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"port|bytes"):
        bad()
