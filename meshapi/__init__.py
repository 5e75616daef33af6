"""meshapi: one per cell. Serves the cell's records to its agents and its connected peers.

Flow: etcd (owned, never exposed) -> `etcd_adapter` (the only etcd3aio user) -> `cache` (one
watch, validated state, per-view history) -> `views` (full for the own cell, export for peers) ->
`server` (gRPC list-then-watch and admin API over mTLS, `authz` decides) -> agents. Writes:
`server` -> `writer` (FIFO, batched txns, sync canaries last) -> etcd. After a wipe of etcd:
`recovery` (the async shell) asks `resync` (pure) when each kind's canary may be written again.
`http` serves health, metrics and status; `app` wires it all; `main` is the console script.
Reading order: meshapi/README.md.
"""
