"""nodeagent: one per node. Watches its own cell and every connected peer, programs the maps.

Flow: one `PeerWatcher` per cell (`peers`: connect, check the cell config, list-then-watch; the
IO shell) -> the changes queued to the agent's pure core (`core.AgentCore.step`, no IO, time
passed in) -> its `MeshView` (`meshview`: every cell's `CellCache` — validated, last-known-good,
deletes gated on sync canaries — and peer state) -> the pure policy of `meshcore.lbpolicy`
(merge, per-endpoint selection) -> deltas for `DesiredLb` (`desired`) -> `Reconciler`
(`reconciler`, `fullmaps`) -> `bpf.lbmaps.LbMaps` (the pinned BPF maps); the other nodes' pod
CIDRs -> `routes` (pyroute2). `registration` and `report` write the node's records and status
through the own meshapi; `http` serves /healthz, /readyz, /metrics and /status (both read
`MeshView.status()`); `agent` runs the loop around the core, `app` wires the process, `main` is
the console script. Reading order: nodeagent/README.md.
"""
