"""The frozen gRPC wire format (cellmesh.proto) and the method paths both sides use.

The generated module is committed; `make proto-check` (part of `make lint`) fails when it is stale.
Services are served and called through generic handlers with these paths, so the Watch stream can
send bytes that were serialized once for every watcher of a view.
"""

from meshcore.wire import cellmesh_pb2 as pb

WATCH = "/cellmesh.v1.MeshApi/Watch"
GET_CELL = "/cellmesh.v1.MeshApi/GetCell"
WRITE = "/cellmesh.v1.MeshAdmin/Write"
APPLY_MANIFEST = "/cellmesh.v1.MeshAdmin/ApplyManifest"
DELETE_MANIFEST = "/cellmesh.v1.MeshAdmin/DeleteManifest"
LIST = "/cellmesh.v1.MeshAdmin/List"

# Status details the client acts on (the code alone is not specific enough).
RESUME_UNAVAILABLE = "resume revision unavailable: relist"

__all__ = [
    "APPLY_MANIFEST",
    "DELETE_MANIFEST",
    "GET_CELL",
    "LIST",
    "RESUME_UNAVAILABLE",
    "WATCH",
    "WRITE",
    "pb",
]
