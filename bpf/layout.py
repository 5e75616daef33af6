"""Byte layouts of the socket load balancer's BPF maps: the one place Python spells them.

FROZEN with the C: every layout here mirrors a struct in ``bpf/lb_maps.h`` byte for byte
(``tests/bpf/test_layout.py`` checks sizes and field offsets against the compiled object's
BTF). Change both or neither.

Byte order: addresses and ports are network order (big-endian) in the maps; every other
field (ids, counts, slots, cookies) is host order, which for BPF is the machine's own.
The Python side takes :class:`ipaddress.IPv4Address` and plain ``int`` ports.

Naming leaves room for IPv6: ``Lb4*`` / ``cm_lb4_*`` get ``Lb6*`` / ``cm_lb6_*`` twins
with a 16-byte address.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import ClassVar, Final, Self

# --- maps (pinned by these names) ------------------------------------------------------

SERVICES_MAP: Final = "cm_lb4_services"
BACKENDS_MAP: Final = "cm_lb4_backends"
REVERSE_NAT_MAP: Final = "cm_lb4_reverse_nat"
REVERSE_SK_MAP: Final = "cm_lb4_reverse_sk"
MAP_NAMES: Final = (SERVICES_MAP, BACKENDS_MAP, REVERSE_NAT_MAP, REVERSE_SK_MAP)

# Default capacities (the object's defaults too: CM_LB4_*_MAX in lb_maps.h). The loader sets the
# LB maps' sizes from `MapSizes` (the agent's `--bpf-lb-map-max`) before it loads the object.
# 524 288 holds Cilium's scale test (250 000 endpoints in 25 000 services of 10: 275 000 service
# entries, 250 000 backends) with room to spare. The hash maps are not preallocated
# (BPF_F_NO_PREALLOC in lb_maps.h): the size costs ~8 MiB of buckets, entries as they come.
LB_MAP_MAX_DEFAULT: Final = 524288
SERVICES_MAX: Final = LB_MAP_MAX_DEFAULT
BACKENDS_MAX: Final = LB_MAP_MAX_DEFAULT
REVERSE_NAT_MAX: Final = 65536  # the key is a u16 rev_nat_id: more can never be used
REVERSE_SK_MAX: Final = 65536
LB_MAP_MAX_MIN: Final = 16


@dataclass(frozen=True)
class MapSizes:
    """Capacities (max_entries) of the LB maps, set at load time from the agent's flags."""

    services: int = SERVICES_MAX
    backends: int = BACKENDS_MAX
    reverse_nat: int = REVERSE_NAT_MAX

    def __post_init__(self) -> None:
        for name in ("services", "backends", "reverse_nat"):
            value = getattr(self, name)
            if not LB_MAP_MAX_MIN <= value <= 1 << 24:
                raise ValueError(f"map size {name}={value} out of range {LB_MAP_MAX_MIN}..2^24")
        if self.reverse_nat > REVERSE_NAT_MAX:
            raise ValueError(f"reverse_nat={self.reverse_nat}: its u16 key allows 65536")

    @classmethod
    def from_lb_map_max(cls, lb_map_max: int) -> Self:
        """Cilium's `--bpf-lb-map-max`: one size for the services and backends maps."""
        return cls(lb_map_max, lb_map_max, min(lb_map_max, REVERSE_NAT_MAX))

    def by_map(self) -> dict[str, int]:
        return {
            SERVICES_MAP: self.services,
            BACKENDS_MAP: self.backends,
            REVERSE_NAT_MAP: self.reverse_nat,
        }


# --- programs ---------------------------------------------------------------------------

OBJECT_SOURCE: Final = "sock_lb.c"
BPF_PROG_TYPE_CGROUP_SOCK_ADDR: Final = 18


@dataclass(frozen=True)
class ProgramSpec:
    """One program in the object: its function name, ELF section and cgroup attach type."""

    name: str
    section: str
    attach_type: int  # enum bpf_attach_type
    attach_name: str  # the kernel's name of that attach type, as `bpftool cgroup show` prints it


BPF_CGROUP_INET4_CONNECT: Final = 10
BPF_CGROUP_UDP4_SENDMSG: Final = 14
BPF_CGROUP_UDP4_RECVMSG: Final = 19
BPF_CGROUP_INET4_GETPEERNAME: Final = 29

PROGRAMS: Final = (
    ProgramSpec(
        "sock4_connect", "cgroup/connect4", BPF_CGROUP_INET4_CONNECT, "cgroup_inet4_connect"
    ),
    ProgramSpec("sock4_sendmsg", "cgroup/sendmsg4", BPF_CGROUP_UDP4_SENDMSG, "cgroup_udp4_sendmsg"),
    ProgramSpec("sock4_recvmsg", "cgroup/recvmsg4", BPF_CGROUP_UDP4_RECVMSG, "cgroup_udp4_recvmsg"),
    ProgramSpec(
        "sock4_getpeername",
        "cgroup/getpeername4",
        BPF_CGROUP_INET4_GETPEERNAME,
        "cgroup_inet4_getpeername",
    ),
)

# --- constants shared with the C -------------------------------------------------------

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
SCOPE_EXTERNAL: Final = 0
SCOPE_INTERNAL: Final = 1
MASTER_SLOT: Final = 0

# --- documented layout: struct -> field -> byte offset, and sizes ----------------------

FIELD_OFFSETS: Final[dict[str, dict[str, int]]] = {
    "lb4_key": {"address": 0, "dport": 4, "proto": 6, "scope": 7, "slot": 8, "pad": 10},
    "lb4_service": {"backend_id": 0, "count": 4, "rev_nat_id": 6, "flags": 8, "pad": 9},
    "lb4_backend": {
        "address": 0,
        "port": 4,
        "proto": 6,
        "flags": 7,
        "cell_id": 8,
        "pad": 9,
    },
    "lb4_reverse_nat": {"address": 0, "port": 4, "pad": 6},
    "lb4_sk_key": {"cookie": 0, "address": 8, "port": 12, "pad": 14},
    "lb4_sk_value": {"address": 0, "port": 4, "rev_nat_id": 6},
}


# "=": host byte order, no alignment padding (padding is spelled out as fields).
# Addresses and ports are packed as raw big-endian bytes ("4s" / "2s").
_KEY = struct.Struct("=4s2sBBHH")
_SERVICE = struct.Struct("=IHHB3x")
_BACKEND = struct.Struct("=4s2sBBB3x")
_REVERSE_NAT = struct.Struct("=4s2s2x")
_SK_KEY = struct.Struct("=Q4s2s2x")
_SK_VALUE = struct.Struct("=4s2sH")
_BACKEND_ID = struct.Struct("=I")
_REV_NAT_ID = struct.Struct("=H")

BACKEND_ID_SIZE: Final = _BACKEND_ID.size
REV_NAT_ID_SIZE: Final = _REV_NAT_ID.size


def _port_be(port: int) -> bytes:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    return port.to_bytes(2, "big")


def _port_from(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _check_size(name: str, data: bytes, size: int) -> None:
    if len(data) != size:
        raise ValueError(f"{name}: expected {size} bytes, got {len(data)}")


@dataclass(frozen=True)
class Lb4Key:
    """``struct lb4_key``: key of ``cm_lb4_services``; slot 0 is the master entry."""

    C_NAME: ClassVar[str] = "lb4_key"
    SIZE: ClassVar[int] = _KEY.size

    address: IPv4Address
    dport: int
    proto: int
    scope: int = SCOPE_EXTERNAL
    slot: int = MASTER_SLOT

    def pack(self) -> bytes:
        return _KEY.pack(
            self.address.packed, _port_be(self.dport), self.proto, self.scope, self.slot, 0
        )

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_size(cls.C_NAME, data, cls.SIZE)
        addr, dport, proto, scope, slot, _pad = _KEY.unpack(data)
        return cls(IPv4Address(addr), _port_from(dport), proto, scope, slot)


@dataclass(frozen=True)
class Lb4Service:
    """``struct lb4_service``: master (count, backend_id 0) or slot (backend_id) entry."""

    C_NAME: ClassVar[str] = "lb4_service"
    SIZE: ClassVar[int] = _SERVICE.size

    backend_id: int
    count: int
    rev_nat_id: int
    flags: int = 0

    def pack(self) -> bytes:
        return _SERVICE.pack(self.backend_id, self.count, self.rev_nat_id, self.flags)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_size(cls.C_NAME, data, cls.SIZE)
        backend_id, count, rev_nat_id, flags = _SERVICE.unpack(data)
        return cls(backend_id, count, rev_nat_id, flags)


@dataclass(frozen=True)
class Lb4Backend:
    """``struct lb4_backend``: value of ``cm_lb4_backends`` (key: u32 backend id)."""

    C_NAME: ClassVar[str] = "lb4_backend"
    SIZE: ClassVar[int] = _BACKEND.size

    address: IPv4Address
    port: int
    proto: int
    flags: int = 0
    cell_id: int = 0

    def pack(self) -> bytes:
        return _BACKEND.pack(
            self.address.packed, _port_be(self.port), self.proto, self.flags, self.cell_id
        )

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_size(cls.C_NAME, data, cls.SIZE)
        addr, port, proto, flags, cell_id = _BACKEND.unpack(data)
        return cls(IPv4Address(addr), _port_from(port), proto, flags, cell_id)


@dataclass(frozen=True)
class Lb4ReverseNat:
    """``struct lb4_reverse_nat``: value of ``cm_lb4_reverse_nat`` (key: u16 rev_nat_id)."""

    C_NAME: ClassVar[str] = "lb4_reverse_nat"
    SIZE: ClassVar[int] = _REVERSE_NAT.size

    address: IPv4Address
    port: int

    def pack(self) -> bytes:
        return _REVERSE_NAT.pack(self.address.packed, _port_be(self.port))

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_size(cls.C_NAME, data, cls.SIZE)
        addr, port = _REVERSE_NAT.unpack(data)
        return cls(IPv4Address(addr), _port_from(port))


@dataclass(frozen=True)
class Lb4SkKey:
    """``struct lb4_sk_key``: socket cookie + backend, key of ``cm_lb4_reverse_sk``."""

    C_NAME: ClassVar[str] = "lb4_sk_key"
    SIZE: ClassVar[int] = _SK_KEY.size

    cookie: int
    address: IPv4Address
    port: int

    def pack(self) -> bytes:
        return _SK_KEY.pack(self.cookie, self.address.packed, _port_be(self.port))

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_size(cls.C_NAME, data, cls.SIZE)
        cookie, addr, port = _SK_KEY.unpack(data)
        return cls(cookie, IPv4Address(addr), _port_from(port))


@dataclass(frozen=True)
class Lb4SkValue:
    """``struct lb4_sk_value``: the VIP a reverse-translated socket shows."""

    C_NAME: ClassVar[str] = "lb4_sk_value"
    SIZE: ClassVar[int] = _SK_VALUE.size

    address: IPv4Address
    port: int
    rev_nat_id: int

    def pack(self) -> bytes:
        return _SK_VALUE.pack(self.address.packed, _port_be(self.port), self.rev_nat_id)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_size(cls.C_NAME, data, cls.SIZE)
        addr, port, rev_nat_id = _SK_VALUE.unpack(data)
        return cls(IPv4Address(addr), _port_from(port), rev_nat_id)


LAYOUTS: Final = (Lb4Key, Lb4Service, Lb4Backend, Lb4ReverseNat, Lb4SkKey, Lb4SkValue)
# Sizes come from the codecs themselves; the test holds them against the object's BTF.
STRUCT_SIZES: Final[dict[str, int]] = {layout.C_NAME: layout.SIZE for layout in LAYOUTS}


def pack_backend_id(backend_id: int) -> bytes:
    """Key of ``cm_lb4_backends``."""
    return _BACKEND_ID.pack(backend_id)


def unpack_backend_id(data: bytes) -> int:
    _check_size("backend_id", data, BACKEND_ID_SIZE)
    value: int = _BACKEND_ID.unpack(data)[0]
    return value


def pack_rev_nat_id(rev_nat_id: int) -> bytes:
    """Key of ``cm_lb4_reverse_nat``."""
    return _REV_NAT_ID.pack(rev_nat_id)


def unpack_rev_nat_id(data: bytes) -> int:
    _check_size("rev_nat_id", data, REV_NAT_ID_SIZE)
    value: int = _REV_NAT_ID.unpack(data)[0]
    return value
