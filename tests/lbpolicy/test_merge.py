"""merge_service: which backends a node agent programs for a service, and why (pure, tables)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from ipaddress import ip_address

import pytest

from meshcore.lbpolicy import (
    SELECTED_REASONS,
    BackendState,
    CellSource,
    MergedBackend,
    MergedService,
    Reason,
    ServiceRef,
    backend_state,
    match_port,
    merge_service,
    select_backends,
)
from meshcore.model import (
    Affinity,
    Endpoint,
    EndpointPort,
    Frontend,
    Service,
    parse_service_annotations,
)

REF = ServiceRef("shop", "cart")
HOME = "home"  # the agent's own cell
CELL_IDS = {HOME: 1, "east": 2, "west": 3}
OCTET = {HOME: 1, "east": 2, "west": 3}  # backends of cell X are 10.<OCTET[X]>.0.<n>
VIP = "10.96.0.10"
LOCAL, REMOTE, NONE = Affinity.LOCAL, Affinity.REMOTE, Affinity.NONE
R = Reason

# Endpoint conditions by code: (ready, serving, terminating).
CONDITIONS = {
    "A": (True, True, False),  # active
    "T": (False, True, True),  # terminating, still serving
    "X": (False, False, True),  # terminating, no longer serving
    "D": (False, False, False),  # dead: not ready
}


def service(
    cell: str,
    *,
    global_: bool = True,
    shared: bool = True,
    affinity: Affinity = NONE,
    frontends: Sequence[Frontend] | None = None,
    warnings: Sequence[str] = (),
) -> Service:
    return Service(
        cell=cell,
        namespace=REF.namespace,
        name=REF.name,
        frontends=[Frontend(vip=VIP, port=80)] if frontends is None else list(frontends),
        global_=global_,
        shared=shared,
        affinity=affinity,
        warnings=list(warnings),
    )


def endpoint(
    cell: str,
    address: str,
    code: str = "A",
    *,
    ports: Sequence[EndpointPort] | None = None,
    updated_at: float = 0.0,
) -> Endpoint:
    ready, serving, terminating = CONDITIONS[code]
    return Endpoint(
        cell=cell,
        namespace=REF.namespace,
        service=REF.name,
        address=address,
        ports=list(ports or [EndpointPort(port=8080)]),
        ready=ready,
        serving=serving,
        terminating=terminating,
        updated_at=updated_at,
    )


def coded(cell: str, codes: str) -> list[Endpoint]:
    """One endpoint per condition code, at 10.<cell octet>.0.1, .2, ..."""
    return [endpoint(cell, f"10.{OCTET[cell]}.0.{i}", c) for i, c in enumerate(codes, start=1)]


def source(
    cell: str,
    svc: Service | None,
    endpoints: Sequence[Endpoint] = (),
    *,
    stale: bool = False,
    local: bool | None = None,
) -> CellSource:
    return CellSource(
        cell=cell,
        cell_id=CELL_IDS[cell],
        local=cell == HOME if local is None else local,
        service=svc,
        endpoints={str(e.address): e for e in endpoints},
        stale=stale,
    )


def merge(*sources: CellSource) -> MergedService:
    merged = merge_service(REF, {s.cell: s for s in sources})
    assert merged is not None
    return merged


def label(cell: str, address: str) -> str:
    """``home.2`` for 10.1.0.2 of cell home: short keys for the expectation tables."""
    return f"{cell}.{address.rsplit('.', 1)[1]}"


def reasons_of(merged: MergedService, index: int = 0) -> dict[str, Reason]:
    return {label(d.cell, d.address): d.reason for d in merged.frontends[index].decisions}


def selected_of(merged: MergedService, index: int = 0) -> list[str]:
    return [label(b.cell, str(b.address)) for b in merged.frontends[index].backends]


# --- affinity x health -------------------------------------------------------------------------

SEL, SPILL, TERM = R.SELECTED, R.SELECTED_SPILLOVER, R.SELECTED_TERMINATING


@pytest.mark.parametrize(
    ("affinity", "cells", "expected"),
    [
        # affinity local
        pytest.param(
            LOCAL,
            {HOME: "AD", "east": "A"},
            {"home.1": SEL, "home.2": R.NOT_READY, "east.1": R.PREFERRED_LOCAL_ACTIVE},
            id="local-active-preferred",
        ),
        pytest.param(
            LOCAL,
            {HOME: "DD", "east": "AA"},
            {"home.1": R.NOT_READY, "home.2": R.NOT_READY, "east.1": SPILL, "east.2": SPILL},
            id="local-all-dead",
        ),
        pytest.param(
            LOCAL,
            {HOME: "", "east": "A", "west": "AD"},
            {"east.1": SPILL, "west.1": SPILL, "west.2": R.NOT_READY},
            id="local-no-endpoints-spills-to-every-remote",
        ),
        pytest.param(
            LOCAL,
            {HOME: "T", "east": "A"},
            {"home.1": R.TERMINATING_UNUSED, "east.1": SPILL},
            id="local-terminating-only-with-remote-active",
        ),
        pytest.param(
            LOCAL,
            {HOME: "TD", "east": "TX"},
            {
                "home.1": TERM,
                "home.2": R.NOT_READY,
                "east.1": R.PREFERRED_LOCAL_TERMINATING,
                "east.2": R.NOT_READY,
            },
            id="local-nothing-active-prefers-local-terminating",
        ),
        pytest.param(
            LOCAL,
            {HOME: "D", "east": "T"},
            {"home.1": R.NOT_READY, "east.1": TERM},
            id="local-nothing-active-remote-terminating",
        ),
        pytest.param(
            LOCAL,
            {HOME: "DX", "east": "D"},
            {"home.1": R.NOT_READY, "home.2": R.NOT_READY, "east.1": R.NOT_READY},
            id="local-everything-dead-empty-frontend",
        ),
        # affinity remote
        pytest.param(
            REMOTE,
            {HOME: "A", "east": "A", "west": "T"},
            {"home.1": R.PREFERRED_REMOTE_ACTIVE, "east.1": SEL, "west.1": R.TERMINATING_UNUSED},
            id="remote-active-preferred",
        ),
        pytest.param(
            REMOTE,
            {HOME: "AA", "east": "D"},
            {"home.1": SPILL, "home.2": SPILL, "east.1": R.NOT_READY},
            id="remote-all-dead",
        ),
        pytest.param(
            REMOTE,
            {HOME: "A", "east": "T"},
            {"home.1": SPILL, "east.1": R.TERMINATING_UNUSED},
            id="remote-terminating-only-with-local-active",
        ),
        pytest.param(
            REMOTE,
            {HOME: "T", "east": "TD"},
            {"home.1": R.PREFERRED_REMOTE_TERMINATING, "east.1": TERM, "east.2": R.NOT_READY},
            id="remote-nothing-active-prefers-remote-terminating",
        ),
        pytest.param(
            REMOTE,
            {HOME: "T", "east": "D"},
            {"home.1": TERM, "east.1": R.NOT_READY},
            id="remote-nothing-active-local-terminating",
        ),
        # affinity none
        pytest.param(
            NONE,
            {HOME: "A", "east": "A", "west": "A"},
            {"home.1": SEL, "east.1": SEL, "west.1": SEL},
            id="none-all-active",
        ),
        pytest.param(
            NONE,
            {HOME: "ATDX", "east": "A"},
            {
                "home.1": SEL,
                "home.2": R.TERMINATING_UNUSED,
                "home.3": R.NOT_READY,
                "home.4": R.NOT_READY,
                "east.1": SEL,
            },
            id="none-mixed",
        ),
        pytest.param(
            NONE,
            {HOME: "D", "east": "A"},
            {"home.1": R.NOT_READY, "east.1": SEL},
            id="none-local-dead-remote-active",
        ),
        pytest.param(
            NONE,
            {HOME: "TD", "east": "T"},
            {"home.1": TERM, "home.2": R.NOT_READY, "east.1": TERM},
            id="nothing-active-uses-terminating",
        ),
        pytest.param(
            NONE,
            {HOME: "X", "east": "D"},
            {"home.1": R.NOT_READY, "east.1": R.NOT_READY},
            id="none-nothing-usable",
        ),
    ],
)
def test_affinity_and_health(
    affinity: Affinity, cells: Mapping[str, str], expected: dict[str, Reason]
) -> None:
    merged = merge(
        *(
            source(cell, service(cell, affinity=affinity if cell == HOME else NONE), coded(cell, c))
            for cell, c in cells.items()
        )
    )
    assert merged.affinity is affinity
    assert reasons_of(merged) == expected
    chosen = sorted(k for k, reason in expected.items() if reason in SELECTED_REASONS)
    assert selected_of(merged) == chosen
    for decision in merged.frontends[0].decisions:
        assert decision.selected is (decision.reason in SELECTED_REASONS)


@pytest.mark.parametrize(
    ("ready", "serving", "terminating", "state"),
    [
        pytest.param(True, True, False, BackendState.ACTIVE, id="ready"),
        pytest.param(True, False, False, BackendState.ACTIVE, id="ready-not-serving"),
        pytest.param(True, True, True, BackendState.TERMINATING, id="ready-terminating-serving"),
        pytest.param(False, True, True, BackendState.TERMINATING, id="terminating-serving"),
        pytest.param(True, False, True, BackendState.UNHEALTHY, id="ready-terminating-drained"),
        pytest.param(False, False, True, BackendState.UNHEALTHY, id="terminating-drained"),
        pytest.param(False, True, False, BackendState.UNHEALTHY, id="serving-not-ready"),
        pytest.param(False, False, False, BackendState.UNHEALTHY, id="dead"),
    ],
)
def test_backend_state(ready: bool, serving: bool, terminating: bool, state: BackendState) -> None:
    e = endpoint(HOME, "10.1.0.1").model_copy(
        update={"ready": ready, "serving": serving, "terminating": terminating}
    )
    assert backend_state(e) is state


# --- global / shared flags ---------------------------------------------------------------------


# (global, shared) as a service's annotations can set them; None: the cell has no record.
GLOBAL_SHARED, GLOBAL_ONLY, NOT_GLOBAL = (True, True), (True, False), (False, False)


@pytest.mark.parametrize(
    ("local_flags", "east_flags", "expected"),
    [
        pytest.param(
            GLOBAL_SHARED,
            GLOBAL_SHARED,
            {"home.1": SEL, "east.1": SEL},
            id="both-global-shared",
        ),
        pytest.param(
            GLOBAL_ONLY,
            GLOBAL_SHARED,
            {"home.1": SEL, "east.1": SEL},
            id="local-not-shared-still-consumes-remote",
        ),
        pytest.param(
            GLOBAL_SHARED,
            GLOBAL_ONLY,
            {"home.1": SEL, "east.1": R.REMOTE_NOT_SHARED},
            id="remote-not-shared-excluded",
        ),
        pytest.param(
            NOT_GLOBAL,
            GLOBAL_SHARED,
            {"home.1": SEL, "east.1": R.LOCAL_NOT_GLOBAL},
            id="local-not-global-local-only",
        ),
        pytest.param(
            GLOBAL_SHARED,
            NOT_GLOBAL,
            {"home.1": SEL, "east.1": R.REMOTE_NOT_GLOBAL},
            id="remote-not-global-excluded",
        ),
        pytest.param(
            GLOBAL_SHARED,
            None,
            {"home.1": SEL, "east.1": R.REMOTE_NO_SERVICE},
            id="remote-endpoints-without-service-ignored",
        ),
        pytest.param(
            NOT_GLOBAL,
            GLOBAL_ONLY,
            {"home.1": SEL, "east.1": R.LOCAL_NOT_GLOBAL},
            id="local-not-global-wins-over-remote-reason",
        ),
    ],
)
def test_global_and_shared(
    local_flags: tuple[bool, bool],
    east_flags: tuple[bool, bool] | None,
    expected: dict[str, Reason],
) -> None:
    east_service = None
    if east_flags is not None:
        east_service = service("east", global_=east_flags[0], shared=east_flags[1])
    local_service = service(HOME, global_=local_flags[0], shared=local_flags[1])
    merged = merge(
        source(HOME, local_service, coded(HOME, "A")),
        source("east", east_service, coded("east", "A")),
    )
    assert merged.global_ is local_flags[0]
    assert reasons_of(merged) == expected
    excluded = merged.frontends[0].decisions[0]  # east sorts before home
    assert excluded.cell == "east"
    assert excluded.backend is not None  # the port matched: explain can still show its state
    assert excluded.backend.state is BackendState.ACTIVE


def test_local_not_global_ignores_affinity_spillover() -> None:
    """Not global: a dead local backend set stays empty rather than spill to other cells."""
    merged = merge(
        source(HOME, service(HOME, global_=False, shared=False), coded(HOME, "D")),
        source("east", service("east"), coded("east", "A")),
    )
    assert merged.frontends[0].backends == ()
    assert reasons_of(merged) == {"home.1": R.NOT_READY, "east.1": R.LOCAL_NOT_GLOBAL}


def test_unknown_affinity_falls_back_to_none_and_warns() -> None:
    flags = parse_service_annotations(
        {"service.cilium.io/global": "true", "service.cilium.io/affinity": "sideways"}
    )
    local = service(
        HOME,
        global_=flags.global_,
        shared=flags.shared,
        affinity=flags.affinity,
        warnings=flags.warnings,
    )
    merged = merge(
        source(HOME, local, coded(HOME, "A")),
        source("east", service("east"), coded("east", "A")),
    )
    assert merged.affinity is NONE
    assert merged.global_ is True
    assert len(merged.warnings) == 1
    assert "sideways" in merged.warnings[0]
    assert merged.warnings == flags.warnings
    assert reasons_of(merged) == {"home.1": SEL, "east.1": SEL}


# --- ports -------------------------------------------------------------------------------------

HTTP = Frontend(name="http", vip=VIP, port=80)
METRICS = Frontend(name="metrics", vip=VIP, port=9090)
DNS_UDP = Frontend(name="dns", vip=VIP, port=53, protocol="UDP")
UNNAMED = Frontend(vip=VIP, port=80)


def _port(name: str, port: int, protocol: str = "TCP") -> EndpointPort:
    return EndpointPort.model_validate({"name": name, "port": port, "protocol": protocol})


@pytest.mark.parametrize(
    ("frontend", "ports", "expected"),
    [
        pytest.param(HTTP, [_port("http", 8080)], 8080, id="named"),
        pytest.param(
            METRICS, [_port("http", 8080), _port("metrics", 9100)], 9100, id="named-second"
        ),
        pytest.param(HTTP, [_port("metrics", 80)], None, id="named-no-such-name"),
        pytest.param(HTTP, [_port("http", 8080, "UDP")], None, id="named-wrong-protocol"),
        pytest.param(
            DNS_UDP, [_port("dns", 5353, "TCP"), _port("dns", 5354, "UDP")], 5354, id="named-udp"
        ),
        pytest.param(UNNAMED, [_port("", 8080)], 8080, id="unnamed-single-other-number"),
        pytest.param(UNNAMED, [_port("", 8080, "UDP")], None, id="unnamed-single-wrong-protocol"),
        pytest.param(UNNAMED, [_port("", 81), _port("", 80)], 80, id="unnamed-several-same-number"),
        pytest.param(UNNAMED, [_port("", 81), _port("", 82)], None, id="unnamed-several-no-number"),
        pytest.param(UNNAMED, [_port("web", 80)], 80, id="unnamed-frontend-named-port-same-number"),
        pytest.param(UNNAMED, [_port("web", 8080)], None, id="unnamed-frontend-named-port-other"),
    ],
)
def test_match_port(frontend: Frontend, ports: list[EndpointPort], expected: int | None) -> None:
    matched = match_port(frontend, endpoint(HOME, "10.1.0.1", ports=ports))
    assert (matched.port if matched else None) == expected


def test_named_ports_across_cells() -> None:
    """Two named ports; each cell lists them in another order and with other target numbers."""
    local = service(HOME, frontends=[HTTP, METRICS])
    merged = merge(
        source(
            HOME,
            local,
            [endpoint(HOME, "10.1.0.1", ports=[_port("http", 8080), _port("metrics", 9100)])],
        ),
        source(
            "east",
            service("east", frontends=[HTTP, METRICS]),
            [endpoint("east", "10.2.0.1", ports=[_port("metrics", 9200), _port("http", 8081)])],
        ),
    )
    assert [f.frontend for f in merged.frontends] == [HTTP, METRICS]
    http, metrics = merged.frontends
    assert [(b.cell, b.port) for b in http.backends] == [("east", 8081), (HOME, 8080)]
    assert [(b.cell, b.port) for b in metrics.backends] == [("east", 9200), (HOME, 9100)]
    assert merged.warnings == ()


def test_no_matching_port() -> None:
    merged = merge(
        source(
            HOME,
            service(HOME, frontends=[HTTP]),
            [
                endpoint(HOME, "10.1.0.1", ports=[_port("http", 8080)]),
                endpoint(HOME, "10.1.0.2", ports=[_port("grpc", 8080)]),
            ],
        ),
    )
    frontend = merged.frontends[0]
    assert reasons_of(merged) == {"home.1": SEL, "home.2": R.NO_MATCHING_PORT}
    assert frontend.decisions[1].backend is None
    assert frontend.decisions[1].selected is False
    assert [str(b.address) for b in frontend.backends] == ["10.1.0.1"]


def test_remote_ports_differ_warns() -> None:
    merged = merge(
        source(HOME, service(HOME, frontends=[HTTP]), [endpoint(HOME, "10.1.0.1")]),
        source(
            "east",
            service("east", frontends=[HTTP, METRICS]),
            [endpoint("east", "10.2.0.1", ports=[_port("http", 8080)])],
        ),
    )
    assert selected_of(merged) == ["east.1"]  # unnamed local endpoint port: no "http" name
    assert merged.warnings == (
        "cell 'east' publishes ports [http:80/TCP, metrics:9090/TCP], this cell [http:80/TCP]; "
        "its backends are matched to the local frontends",
    )


# --- stale peers, IPv6, edges ------------------------------------------------------------------


def test_stale_peer_backends_still_selected() -> None:
    merged = merge(
        source(HOME, service(HOME, affinity=LOCAL), coded(HOME, "D")),
        source("east", service("east"), coded("east", "A"), stale=True),
        source("west", service("west"), coded("west", "A")),
    )
    assert [(b.cell, b.stale, b.local) for b in merged.frontends[0].backends] == [
        ("east", True, False),
        ("west", False, False),
    ]
    assert reasons_of(merged)["east.1"] is SPILL


def test_backend_fields() -> None:
    merged = merge(
        source(HOME, service(HOME), [endpoint(HOME, "10.1.0.1", updated_at=17.5)]),
        source("east", service("east"), [endpoint("east", "10.2.0.9", "T", updated_at=3.0)]),
    )
    assert merged.frontends[0].backends == (
        MergedBackend(
            cell=HOME,
            cell_id=1,
            address=ip_address("10.1.0.1"),
            port=8080,
            protocol="TCP",
            local=True,
            state=BackendState.ACTIVE,
            stale=False,
            updated_at=17.5,
        ),
    )
    remote = merged.frontends[0].decisions[0]
    assert (remote.cell, remote.address, remote.selected) == ("east", "10.2.0.9", False)
    assert remote.backend is not None
    assert (remote.backend.cell_id, remote.backend.state) == (2, BackendState.TERMINATING)


def test_ipv6_backend_listed_with_warning() -> None:
    merged = merge(
        source(HOME, service(HOME), [endpoint(HOME, "fd00:1::5"), endpoint(HOME, "10.1.0.1")]),
    )
    assert [str(b.address) for b in merged.frontends[0].backends] == ["10.1.0.1", "fd00:1::5"]
    assert merged.frontends[0].backends[1].address.version == 6
    assert len(merged.warnings) == 1
    assert "fd00:1::5" in merged.warnings[0]
    assert "IPv6" in merged.warnings[0]


def test_local_service_warnings_come_first() -> None:
    merged = merge(
        source(HOME, service(HOME, frontends=[HTTP], warnings=["from the parser"])),
        source("east", service("east", frontends=[METRICS])),
    )
    assert merged.warnings[0] == "from the parser"
    assert len(merged.warnings) == 2


def test_no_local_service_is_none() -> None:
    sources = [source(HOME, None, coded(HOME, "A")), source("east", service("east"), [])]
    assert merge_service(REF, {s.cell: s for s in sources}) is None


def test_service_without_frontends() -> None:
    merged = merge(source(HOME, service(HOME, frontends=[]), coded(HOME, "A")))
    assert merged.frontends == ()


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param([source("east", service("east"))], id="no-local"),
        pytest.param(
            [source(HOME, service(HOME)), source("east", service("east"), local=True)],
            id="two-local",
        ),
    ],
)
def test_exactly_one_local_source(sources: list[CellSource]) -> None:
    with pytest.raises(ValueError, match="exactly one source must be local"):
        merge_service(REF, {s.cell: s for s in sources})


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param({"west": source(HOME, service(HOME))}, id="filed-under-other-cell"),
        pytest.param({HOME: source(HOME, service("east"))}, id="service-of-other-cell"),
        pytest.param(
            {HOME: source(HOME, service(HOME), [endpoint("east", "10.2.0.1")])},
            id="endpoint-of-other-cell",
        ),
        pytest.param(
            {
                HOME: source(
                    HOME,
                    service(HOME),
                    [endpoint(HOME, "10.1.0.1").model_copy(update={"service": "other"})],
                )
            },
            id="endpoint-of-other-service",
        ),
    ],
)
def test_mismatched_records_rejected(sources: dict[str, CellSource]) -> None:
    with pytest.raises(ValueError, match=r"belong|filed under"):
        merge_service(REF, sources)


# --- determinism, select_backends, reasons -----------------------------------------------------


def test_deterministic_regardless_of_input_order() -> None:
    cells = {HOME: "ADTA", "east": "ATA", "west": "DA"}
    all_sources = [
        source(
            cell,
            service(cell, frontends=[HTTP, METRICS], affinity=LOCAL),
            [
                endpoint(cell, f"10.{OCTET[cell]}.0.{i}", c, ports=[_port("http", 80 + i)])
                for i, c in enumerate(codes, start=1)
            ]
            + [endpoint(cell, f"fd00:{OCTET[cell]}::1", ports=[_port("metrics", 9100)])],
            stale=cell == "west",
        )
        for cell, codes in cells.items()
    ]
    expected = merge(*all_sources)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = []
        for s in rng.sample(all_sources, len(all_sources)):
            items = list(s.endpoints.items())
            rng.shuffle(items)
            shuffled.append(
                CellSource(s.cell, s.cell_id, s.local, s.service, dict(items), stale=s.stale)
            )
        assert merge(*shuffled) == expected
    for frontend in expected.frontends:
        keys = [(b.cell, b.address.version, int(b.address), b.port) for b in frontend.backends]
        assert keys == sorted(keys)
        order = [
            (d.cell, ip_address(d.address).version, int(ip_address(d.address)))
            for d in frontend.decisions
        ]
        assert order == sorted(order)


def test_select_backends_directly() -> None:
    def backend(cell: str, n: int, state: BackendState) -> MergedBackend:
        return MergedBackend(
            cell=cell,
            cell_id=CELL_IDS[cell],
            address=ip_address(f"10.{OCTET[cell]}.0.{n}"),
            port=80,
            protocol="TCP",
            local=cell == HOME,
            state=state,
            stale=False,
            updated_at=0.0,
        )

    west = backend("west", 1, BackendState.ACTIVE)
    home = backend(HOME, 1, BackendState.ACTIVE)
    east = backend("east", 1, BackendState.ACTIVE)
    selected, reasons = select_backends([west, home, east], REMOTE)
    assert selected == [east, west]
    assert reasons == {home: R.PREFERRED_REMOTE_ACTIVE, east: SEL, west: SEL}
    assert select_backends([], LOCAL) == ([], {})


def test_every_reason_is_described() -> None:
    for reason in Reason:
        assert reason.value == reason.value.lower()
        assert " " not in reason.value
        assert "_" not in reason.value
        assert reason.describe()
    assert R.TERMINATING_UNUSED.describe() == "terminating; used only when nothing else is left"
    assert R.PREFERRED_LOCAL_ACTIVE.describe() == "affinity local: a local backend is active"
