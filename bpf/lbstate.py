"""The load balancer's state as the agent speaks it, and as the maps hold it (pure: no IO).

`Frontend` / `ServiceEntry` / `LbState` / `LbDiff` are what the node agent computes; `LbMaps`
(bpf/lbmaps.py) turns a diff into map writes. `decode_maps` reads packed map entries back into
`MapContents` (what `dump()`, `restore()` and `meshctl bpf services` show), and `format_dump`
renders it as canonical, sorted text for golden tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final, NewType

from bpf.layout import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    MASTER_SLOT,
    SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
    Lb4Backend,
    Lb4Key,
    Lb4ReverseNat,
    Lb4Service,
    unpack_backend_id,
    unpack_rev_nat_id,
)

BackendId = NewType("BackendId", int)
"""A backend's id: the backends map's key, and what a service's slots hold."""
RevNatId = NewType("RevNatId", int)
"""A frontend's reverse-NAT id: the reverse-NAT map's key, held by the service's master entry."""

BACKEND_ID_MAX: Final = 0xFFFF_FFFF
REV_NAT_ID_MAX: Final = 0xFFFF
SLOTS_MAX: Final = 0xFFFF
CELL_ID_MAX: Final = 0xFF
PROTO_NAMES: Final = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
SCOPE_NAMES: Final = {SCOPE_EXTERNAL: "external", SCOPE_INTERNAL: "internal"}


# --- the model the agent speaks -------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Frontend:
    """A service frontend: VIP, port, protocol (and scope)."""

    address: IPv4Address
    port: int
    proto: int
    scope: int = SCOPE_EXTERNAL

    def key(self, slot: int = MASTER_SLOT) -> Lb4Key:
        return Lb4Key(self.address, self.port, self.proto, self.scope, slot)

    @classmethod
    def of_key(cls, key: Lb4Key) -> Frontend:
        return cls(key.address, key.dport, key.proto, key.scope)

    def __str__(self) -> str:
        text = f"{self.address}:{self.port}/{PROTO_NAMES.get(self.proto, str(self.proto))}"
        return text if self.scope == SCOPE_EXTERNAL else f"{text}/{_scope_name(self.scope)}"


@dataclass(frozen=True)
class ServiceEntry:
    """What a frontend balances over: backend ids in slot order, and its reverse-NAT id."""

    rev_nat_id: RevNatId
    backend_ids: tuple[BackendId, ...]
    flags: int = 0


@dataclass
class LbState:
    services: dict[Frontend, ServiceEntry] = field(default_factory=dict)
    backends: dict[BackendId, Lb4Backend] = field(default_factory=dict)

    def copy(self) -> LbState:
        return LbState(dict(self.services), dict(self.backends))


@dataclass
class LbDiff:
    """Upserts and deletes (value None) of backends and services."""

    backends: dict[BackendId, Lb4Backend | None] = field(default_factory=dict)
    services: dict[Frontend, ServiceEntry | None] = field(default_factory=dict)

    @classmethod
    def between(cls, actual: LbState, desired: LbState) -> LbDiff:
        """The diff that turns actual into desired (a full pass: O(size of both))."""
        diff = cls()
        for bid, be in desired.backends.items():
            if actual.backends.get(bid) != be:
                diff.backends[bid] = be
        for bid in actual.backends.keys() - desired.backends.keys():
            diff.backends[bid] = None
        for fe, entry in desired.services.items():
            if actual.services.get(fe) != entry:
                diff.services[fe] = entry
        for fe in actual.services.keys() - desired.services.keys():
            diff.services[fe] = None
        return diff

    def __len__(self) -> int:
        return len(self.backends) + len(self.services)


# --- what the maps hold, decoded (dump, restore and `meshctl bpf` read this) ------------


@dataclass(frozen=True)
class MapService:
    """One frontend as the services map holds it: the master entry (if any) and every slot."""

    frontend: Frontend
    count: int | None  # None: slots without a master entry (left by an interrupted write)
    rev_nat_id: RevNatId
    flags: int
    slots: dict[int, BackendId]  # slot -> backend id

    @property
    def backend_ids(self) -> tuple[BackendId, ...]:
        """Backend ids of slots 1..count (0 where a slot is missing)."""
        missing = BackendId(0)
        return tuple(self.slots.get(i, missing) for i in range(1, (self.count or 0) + 1))

    @property
    def stale_slots(self) -> dict[int, BackendId]:
        return {s: b for s, b in self.slots.items() if s > (self.count or 0)}


@dataclass(frozen=True)
class MapContents:
    services: list[MapService]  # sorted by frontend
    backends: dict[BackendId, Lb4Backend]  # sorted by id
    reverse_nat: dict[RevNatId, Lb4ReverseNat]  # sorted by id


def decode_maps(
    services: Iterable[tuple[bytes, bytes]],
    backends: Iterable[tuple[bytes, bytes]],
    reverse_nat: Iterable[tuple[bytes, bytes]],
) -> MapContents:
    masters: dict[Frontend, Lb4Service] = {}
    slots: dict[Frontend, dict[int, BackendId]] = {}
    for raw_key, raw_value in services:
        key = Lb4Key.unpack(raw_key)
        value = Lb4Service.unpack(raw_value)
        fe = Frontend.of_key(key)
        if key.slot == MASTER_SLOT:
            masters[fe] = value
        else:
            slots.setdefault(fe, {})[key.slot] = BackendId(value.backend_id)
    decoded = []
    for fe in sorted(masters.keys() | slots.keys()):
        master = masters.get(fe)
        decoded.append(
            MapService(
                frontend=fe,
                count=master.count if master else None,
                rev_nat_id=RevNatId(master.rev_nat_id if master else 0),
                flags=master.flags if master else 0,
                slots=dict(sorted(slots.get(fe, {}).items())),
            )
        )
    be = {BackendId(unpack_backend_id(k)): Lb4Backend.unpack(v) for k, v in backends}
    rn = {RevNatId(unpack_rev_nat_id(k)): Lb4ReverseNat.unpack(v) for k, v in reverse_nat}
    return MapContents(decoded, dict(sorted(be.items())), dict(sorted(rn.items())))


def format_dump(contents: MapContents) -> str:
    """Canonical text: one line per entry, sorted; equal maps give equal text."""
    lines = []
    for bid, be in contents.backends.items():
        lines.append(
            f"backend {bid} {be.address}:{be.port}/{_proto_name(be.proto)} "
            f"cell={be.cell_id} flags={be.flags:#04x}"
        )
    for rid, rn in contents.reverse_nat.items():
        lines.append(f"revnat {rid} {rn.address}:{rn.port}")
    for svc in contents.services:
        if svc.count is None:
            head = f"service {svc.frontend} master=missing"
        else:
            ids = ",".join(str(b) for b in svc.backend_ids)
            head = (
                f"service {svc.frontend} rev_nat={svc.rev_nat_id} flags={svc.flags:#04x} "
                f"count={svc.count} backends=[{ids}]"
            )
        stale = svc.stale_slots
        if stale:
            head += " stale_slots=" + ",".join(f"{s}:{b}" for s, b in stale.items())
        lines.append(head)
    return "".join(line + "\n" for line in lines)


def _proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def _scope_name(scope: int) -> str:
    return SCOPE_NAMES.get(scope, str(scope))
