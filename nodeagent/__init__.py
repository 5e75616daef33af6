"""nodeagent: one per node. Watches its own cell and every connected peer, programs the maps.

Flow: own-cell `PeerWatcher` -> its `CellCache` lists the connected peers -> one `PeerWatcher`
per peer (`peers`: connect, check the cell config, list-then-watch) -> per-cell `CellCache`
(`cellcache`: validated, last-known-good, deletes gated on sync canaries) -> the pure policy of
`meshcore.lbpolicy` (merge, per-endpoint selection) -> `DesiredLb` (`desired`) -> `Reconciler`
(`reconciler`, `fullmaps`) -> `bpf.lbmaps.LbMaps` (the pinned BPF maps); remote nodes' pod CIDRs
-> `routes` (pyroute2). `registration` and `report` write the node's records and status through
the own meshapi; `http` serves /healthz, /readyz, /metrics and /status; `agent` runs the loop,
`app` wires the process, `main` is the console script. Reading order: nodeagent/README.md.
"""
