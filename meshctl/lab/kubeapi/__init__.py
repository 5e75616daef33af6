"""A Kubernetes API server double: the real protocol on 127.0.0.1, for the lab and the tests.

What it is: an aiohttp server (`KubeApiDouble`; `KubeApiThread` runs one in a daemon thread;
``python -m meshctl.lab.kubeapi`` runs one as a process) that the real ``kubernetes`` and
``kubernetes_asyncio`` clients use unchanged through a kubeconfig (`write_kubeconfig`).

What it implements, as kube-apiserver does: discovery (``/api``, ``/apis``, ``/version``); the
kinds in `resources.RESOURCES` (namespaces, nodes, services, configmaps, secrets,
serviceaccounts, pods, endpointslices, deployments, daemonsets, RBAC, poddisruptionbudgets) with
``/status`` subresources; one global resourceVersion; get, list (label and field selectors,
``limit``/``continue`` consistent across pages, ``resourceVersion``/``resourceVersionMatch``),
create, replace (409 on a stale resourceVersion), merge/strategic/JSON patches, server-side apply
(``fieldManager``, ``managedFields``, an identical re-apply changes nothing), delete (a Namespace
takes its objects along) and deletecollection; chunked watch streams (history replay, BOOKMARKs,
``timeoutSeconds``, ``410 Expired`` below the history, selectors); ``Status`` errors; Service
ClusterIP allocation and defaults; Secret ``stringData``.

What it does not: authentication or authorization (any token is ignored; it serves loopback
only), admission, controllers (nothing runs Pods, fills Deployment status or EndpointSlices:
the lab writes those through `KubeApiDouble.put`), finalizers and graceful deletion (deletes are
immediate), field-ownership conflicts in apply, strategic-merge list semantics (treated as merge
patch), protobuf (so ``kubectl`` can read — get, api-resources — but its writes, sent as
protobuf, get a 415), table output, OpenAPI documents, schema validation of specs, and
persistence.

Flow: ``cli`` / ``thread`` → ``server`` (HTTP, watch streams; ``routes`` maps URLs) → ``api``
(the verbs; ``queries`` parses list/watch parameters) → ``patches`` / ``objects`` / ``selectors``
(pure) → ``store`` (objects, resourceVersion, history; thread-safe).
"""

from meshctl.lab.kubeapi.cli import main
from meshctl.lab.kubeapi.errors import KubeError
from meshctl.lab.kubeapi.server import KubeApiDouble
from meshctl.lab.kubeapi.thread import KubeApiThread

__all__ = ["KubeApiDouble", "KubeApiThread", "KubeError", "main"]
