"""One valid record of every kind, shared by the model tests."""

from __future__ import annotations

from meshcore.model import (
    Affinity,
    AgentStatus,
    CellConfig,
    Endpoint,
    EndpointPort,
    Frontend,
    Heartbeat,
    Identity,
    IpIdentity,
    Kind,
    Node,
    Peer,
    PeerReport,
    Record,
    Service,
    SyncCanary,
    make_identity_id,
)

CELL = "east"
CELL_ID = 7

CELL_CONFIG = CellConfig(
    name=CELL,
    id=CELL_ID,
    pod_cidrs=["10.7.0.0/16", "fd00:7::/48"],
    node_cidrs=["192.168.7.0/24", "fd01:7::/64"],
    capabilities=["socket-lb", "ipv6"],
)

SAMPLES: dict[Kind, Record] = {
    Kind.CELL: CELL_CONFIG,
    Kind.HEARTBEAT: Heartbeat(cell=CELL, timestamp=1_700_000_000.25, sequence=42),
    Kind.PEER: Peer(cell=CELL, name="west", id=9, address="meshapi.west.example:2379"),
    Kind.NODE: Node(
        cell=CELL,
        name="node-1.east.internal",
        addresses=["192.168.7.11", "fd01:7::11"],
        pod_cidrs=["10.7.1.0/24"],
    ),
    Kind.SERVICE: Service(
        cell=CELL,
        namespace="shop",
        name="cart",
        frontends=[
            Frontend(name="http", vip="10.96.0.10", port=80),
            Frontend(name="dns", vip="fd00:96::10", port=53, protocol="UDP"),
        ],
        global_=True,
        shared=True,
        affinity=Affinity.LOCAL,
        warnings=["service.cilium.io/shared: unknown value 'maybe'"],
    ),
    Kind.ENDPOINT: Endpoint(
        cell=CELL,
        namespace="shop",
        service="cart",
        address="fd00:7::1:5",
        node="node-1.east.internal",
        ports=[EndpointPort(name="http", port=8080), EndpointPort(name="dns", port=53)],
        ready=False,
        serving=True,
        terminating=True,
        updated_at=1_700_000_001.5,
    ),
    Kind.IDENTITY: Identity(
        cell=CELL, id=make_identity_id(CELL_ID, 300), labels={"k8s:app": "cart", "k8s:ns": "shop"}
    ),
    Kind.IP_IDENTITY: IpIdentity(cell=CELL, ip="10.7.1.5", identity=make_identity_id(CELL_ID, 300)),
    Kind.SYNCED: SyncCanary(cell=CELL, kind=Kind.ENDPOINT, timestamp=1_700_000_002.0),
    Kind.AGENT: AgentStatus(
        cell=CELL,
        node="node-1.east.internal",
        updated_at=1_700_000_003.0,
        ready=False,
        reason="peer west not synced (syncing)",
        peers=[
            PeerReport(
                cell=CELL,
                cell_id=CELL_ID,
                local=True,
                state="ready",
                synced=True,
                revision=812,
                counts={"nodes": 3, "endpoints": 40, "services": 2},
                heartbeat_age=0.4,
            ),
            PeerReport(
                cell="west",
                cell_id=9,
                state="syncing",
                synced=False,
                last_error="127.0.0.1:7444: UNAVAILABLE: failed to connect",
                error_class="tcp",
            ),
        ],
        services=2,
        backends=40,
    ),
}
