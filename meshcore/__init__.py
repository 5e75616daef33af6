"""Shared core of cellmesh: what meshapi, nodeagent, meshctl and e2e all speak.

Flow: ``model`` (records, key paths, validation, the cell-fit rule; pure) -> ``wire`` (frozen
gRPC wire format) -> ``client`` (``MeshClient``, the gRPC edge: library errors become the types
of ``errors`` there, each carrying its ``ErrorClass``) -> ``watch`` (the list-then-watch client
cache with mark-and-sweep; it waits with ``backoff``) -> ``lbpolicy`` (merge and per-endpoint
backend selection; pure, shared by the node agent and ``meshctl explain``). ``tls`` loads a TLS
directory into gRPC credentials, ``handshake`` probes an address below gRPC; ``flags``, ``logs``
and ``localetcd`` serve the console scripts, the lab and the tests. Nothing here imports
meshapi, nodeagent, meshctl or e2e. Reading order: meshcore/README.md.
"""
