"""Shared core of cellmesh: what meshapi, nodeagent and meshctl all speak.

Flow: ``model`` (records, key paths, validation; pure) -> ``wire`` (frozen gRPC wire format) ->
``watch`` (the list-then-watch client cache with mark-and-sweep) and ``tls`` (loading a TLS
directory into gRPC credentials). Nothing here imports meshapi, nodeagent or meshctl.
"""
