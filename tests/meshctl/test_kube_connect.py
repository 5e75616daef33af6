"""``meshctl connect|disconnect|status|services --kube-context`` against two Kubernetes API doubles.

Each cell is a real etcd and a real (standalone) meshapi, plus its own API server double
(``meshctl.lab.kubeapi``, spoken to by the real ``kubernetes`` client) holding the meshapi
Service ``cellmesh/cellmesh-meshapi`` with a LoadBalancer ingress pointing at that meshapi, and
meshctl's admin certificate where ``meshctl install`` puts it. meshctl discovers each meshapi
from its Service, runs the real preflight against it, and writes the peering into each cluster's
ConfigMap ``cellmesh/cellmesh-peers``, which the tests read back from the doubles.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from certs import Role, issue_certificate
from meshapi.app import MeshApiApp, MeshApiConfig
from meshcore.localetcd import LocalEtcd
from meshcore.model import AgentStatus, Peer, PeerReport
from meshctl.cli import cli
from meshctl.contexts import Context
from meshctl.kube.access import admin_tls_dir, choose_server_name
from meshctl.kube.peers import peers_configmap
from meshctl.lab.kubeapi import KubeApiDouble, KubeApiThread
from meshctl.status_commands import status_document
from tests.conftest import CELL_CIDRS, CELL_IDS, Pki, wait_for
from tests.meshctl.test_connect import Cells

NS, SERVICE, CONFIGMAP = "cellmesh", "cellmesh-meshapi", "cellmesh-peers"


@dataclass
class KubeCells:
    """Two (or more) cells, each with a meshapi, an API double and a kube context."""

    cells: Cells
    tmp: Path
    stack: ExitStack
    apis: dict[str, KubeApiDouble] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.cells.config

    @property
    def kubeconfig(self) -> Path:
        return self.tmp / "kubeconfig"

    async def start(
        self, cell: str, *, ingress: bool = True, kubernetes: bool = False, **options: Any
    ) -> MeshApiApp:
        """Cell ``cell`` behind kube context ``kind-<cell>``: double, meshapi (standalone, or
        fed by the double with ``kubernetes``), its Service, meshctl's admin certificate
        (``options``: ``Cells.start``'s)."""
        context = f"kind-{cell}"
        api = self.stack.enter_context(KubeApiThread())
        self.apis[context] = api
        own = api.write_kubeconfig(self.tmp / f"{context}.yaml", context=context, cluster=context)
        self._merge_kubeconfig(own)
        if kubernetes:
            app = await self._start_kube_mode(cell, own, context)
        else:
            app = await self.cells.start(cell, **options)
        admin = admin_tls_dir(self.config, context)
        admin.mkdir(parents=True)
        for name in ("ca.crt", "tls.crt", "tls.key"):
            shutil.copy(self.cells.pki.tls(cell, Role.ADMIN) / name, admin / name)
        api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        self.put_service(
            context, port=app.grpc_port, ingress={"ip": "127.0.0.1"} if ingress else None
        )
        return app

    async def _start_kube_mode(self, cell: str, kubeconfig: Path, context: str) -> MeshApiApp:
        etcd = await asyncio.to_thread(self.cells.etcd_factory, cell)
        pod, nodes = CELL_CIDRS[cell]
        app = MeshApiApp(
            MeshApiConfig(
                cell=cell,
                cell_id=CELL_IDS[cell],
                pod_cidrs=(ip_network(pod),),
                node_cidrs=(ip_network(nodes),),
                etcd_endpoints=(etcd.endpoint,),
                listen="127.0.0.1:0",
                tls_dir=self.cells.pki.tls(cell, Role.MESHAPI),
                http="127.0.0.1:0",
                heartbeat_interval=0.2,
                source="kubernetes",
                kubeconfig=kubeconfig,
                kube_context=context,
            )
        )
        self.cells.apps[cell] = app
        await app.start()
        await app.wait_ready()
        return app

    def _merge_kubeconfig(self, part: Path) -> None:
        doc: dict[str, Any] = (
            yaml.safe_load(self.kubeconfig.read_text())
            if self.kubeconfig.exists()
            else {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
        )
        new = yaml.safe_load(part.read_text())
        for key in ("clusters", "users", "contexts"):
            doc[key] = [*doc[key], *new[key]]
        doc.setdefault("current-context", new["current-context"])
        self.kubeconfig.write_text(yaml.safe_dump(doc))

    def put_service(self, context: str, *, port: int, ingress: dict[str, str] | None) -> None:
        self.apis[context].put(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NS},
                "spec": {
                    "type": "LoadBalancer",
                    "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
                },
                "status": {"loadBalancer": {"ingress": [ingress] if ingress else []}},
            }
        )

    def configmap(self, context: str) -> dict[str, Any] | None:
        return self.apis[context].get("v1", "ConfigMap", CONFIGMAP, NS)

    def peers(self, context: str) -> dict[str, dict[str, Any]]:
        cm = self.configmap(context)
        return {k: json.loads(v) for k, v in ((cm or {}).get("data") or {}).items()}

    async def run(self, *args: str) -> Result:
        argv = ["--config", str(self.config), *args]
        env: dict[str, str | None] = {
            "MESHCTL_CONTEXT": None,
            "MESHCTL_CONFIG": None,
            "KUBECONFIG": str(self.kubeconfig),
        }
        return await asyncio.to_thread(CliRunner().invoke, cli, argv, env=env)


@pytest.fixture
async def kube(
    pki: Pki, etcd_factory: Callable[[str], LocalEtcd], tmp_path: Path
) -> AsyncIterator[KubeCells]:
    cells = Cells(pki, tmp_path / "meshctl.json", etcd_factory, {})
    with ExitStack() as stack:
        k = KubeCells(cells, tmp_path, stack)
        try:
            yield k
        finally:
            for app in cells.apps.values():
                await app.stop()


def entry(cell_id: int, port: int, **extra: Any) -> dict[str, Any]:
    return {"id": cell_id, "address": f"127.0.0.1:{port}", "tls_server_name": None,
            "watch": True, "export": True, **extra}  # fmt: skip


CONNECT = ("connect", "--kube-context", "kind-alpha", "--destination-kube-context", "kind-beta")
DISCONNECT = (
    "disconnect",
    "--kube-context",
    "kind-alpha",
    "--destination-kube-context",
    "kind-beta",
)


def assert_failed(result: Result, code: int, *messages: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for message in messages:
        assert message in result.stderr, result.stderr


async def test_connect_writes_both_configmaps_from_the_load_balancer_ingress(
    kube: KubeCells,
) -> None:
    alpha = await kube.start("alpha")
    beta = await kube.start("beta")

    result = await kube.run(*CONNECT)
    assert result.exit_code == 0, result.output
    assert "Preflight passed: alpha (id 1) and beta (id 2)" in result.stdout
    assert (
        f"cell alpha: peer beta (127.0.0.1:{beta.grpc_port}) added (bidirectional) "
        "[ConfigMap cellmesh/cellmesh-peers, kube context kind-alpha]"
    ) in result.stdout
    assert "Connected alpha and beta (bidirectional)." in result.stdout
    assert kube.peers("kind-alpha") == {"beta": entry(2, beta.grpc_port)}
    assert kube.peers("kind-beta") == {"alpha": entry(1, alpha.grpc_port)}
    cm = kube.configmap("kind-alpha")
    assert cm is not None
    assert cm["metadata"]["labels"]["cellmesh.io/cell"] == "alpha"
    managers = {e["manager"] for e in cm["metadata"]["managedFields"]}
    assert managers == {"meshctl-connect"}
    # The same format meshapi's Kubernetes source reads (its builder gives the same data).
    ours = peers_configmap(NS, "alpha", [Peer(cell="alpha", name="beta", id=2,
                                              address=f"127.0.0.1:{beta.grpc_port}")])  # fmt: skip
    assert cm["data"] == ours["data"]

    versions = {c: kube.configmap(c)["metadata"]["resourceVersion"] for c in kube.apis}  # type: ignore[index]
    again = await kube.run(*CONNECT)
    assert again.exit_code == 0, again.output
    assert "alpha and beta are already connected (bidirectional)." in again.stdout
    assert {c: kube.configmap(c)["metadata"]["resourceVersion"] for c in kube.apis} == versions  # type: ignore[index]


async def test_in_kubernetes_mode_meshapi_turns_the_configmaps_into_peer_records(
    kube: KubeCells,
) -> None:
    """Both meshapis fed by their API doubles: the ConfigMaps meshctl writes become Peer records
    (so the peering survives an etcd wipe: the cluster keeps it), and go with disconnect."""
    alpha = await kube.start("alpha", kubernetes=True)
    beta = await kube.start("beta", kubernetes=True)
    result = await kube.run(*CONNECT)
    assert result.exit_code == 0, result.output

    def peer_records(cell: str) -> list[Peer]:
        return [record for record, _ in kube.cells.peers(cell).values()]

    await wait_for(
        lambda: bool(peer_records("alpha")) and bool(peer_records("beta")),
        what="Peer records from the ConfigMaps",
    )
    assert peer_records("alpha") == [
        Peer(cell="alpha", name="beta", id=2, address=f"127.0.0.1:{beta.grpc_port}")
    ]
    assert peer_records("beta") == [
        Peer(cell="beta", name="alpha", id=1, address=f"127.0.0.1:{alpha.grpc_port}")
    ]
    status = await kube.run("status", "--kube-context", "kind-alpha", "-o", "json")
    assert [p["name"] for p in json.loads(status.stdout)["peers"]] == ["beta"]
    again = await kube.run(*CONNECT)  # the preflight reads the same peering back
    assert "alpha and beta are already connected (bidirectional)." in again.stdout

    gone = await kube.run(*DISCONNECT)
    assert gone.exit_code == 0, gone.output
    await wait_for(
        lambda: not peer_records("alpha") and not peer_records("beta"),
        what="Peer records gone",
    )


def echo_objects(cell: str, address: str) -> list[dict[str, Any]]:
    """A global Service demo/echo and one EndpointSlice with one backend, as the API has them."""
    meta = {"namespace": "demo"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {**meta, "name": "echo", "annotations": {"service.cilium.io/global": "true"}},
         "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {**meta, "name": f"echo-{cell}",
                      "labels": {"kubernetes.io/service-name": "echo"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [address], "conditions": {"ready": True},
                        "nodeName": "n1"}],
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
    ]  # fmt: skip


async def test_explain_and_services_by_kube_context_find_the_peer_cells(kube: KubeCells) -> None:
    """explain --kube-context: the node's cell by kube context, its peer found among the kube
    contexts installed from here; services --kube-context lists what the API holds."""
    await kube.start("alpha", kubernetes=True)
    await kube.start("beta", kubernetes=True)
    for context, cell, address in (("kind-alpha", "alpha", "10.1.0.5"),
                                   ("kind-beta", "beta", "10.2.0.5")):  # fmt: skip
        for obj in echo_objects(cell, address):
            kube.apis[context].put(obj)
    assert (await kube.run(*CONNECT)).exit_code == 0

    async def services() -> list[Any]:
        result = await kube.run("services", "--kube-context", "kind-beta", "-o", "json")
        assert result.exit_code == 0, result.output
        return [s for s in json.loads(result.stdout) if s["namespace"] == "demo"]

    deadline = time.monotonic() + 10
    while not (listed := await services()) or not listed[0]["endpoints"]:
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.05)
    assert [(s["name"], s["global"]) for s in listed] == [("echo", True)]
    assert [e["address"] for e in listed[0]["endpoints"]] == ["10.2.0.5"]

    await wait_for(lambda: bool(kube.cells.peers("alpha")), what="alpha's Peer record")
    result = await kube.run(
        "explain", "service", "demo/echo", "--node", "alpha/n1", "--kube-context", "kind-alpha",
        "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (frontend,) = doc["frontends"]
    rows = {(b["cell"], b["address"]) for b in frontend["backends"]}
    assert rows == {("alpha", "10.1.0.5"), ("beta", "10.2.0.5")}  # beta found by kube context
    assert "peer states unknown (no agent report)" in doc["notes"]


async def test_destination_endpoint_wins_over_the_service(kube: KubeCells) -> None:
    await kube.start("alpha")
    beta = await kube.start("beta", ingress=False)  # no load balancer yet: the endpoint is used

    missing = await kube.run(*CONNECT)
    assert_failed(
        missing,
        1,
        "kube context 'kind-beta': Service cellmesh/cellmesh-meshapi (type LoadBalancer) has no "
        "LoadBalancer ingress yet",
        "or pass --destination-endpoint HOST:PORT",
    )
    assert kube.configmap("kind-alpha") is None
    assert kube.configmap("kind-beta") is None

    # An ingress that leads nowhere: the endpoint given wins over it.
    kube.put_service("kind-beta", port=beta.grpc_port, ingress={"hostname": "nlb.invalid"})
    endpoint = f"localhost:{beta.grpc_port}"
    result = await kube.run(*CONNECT, "--destination-endpoint", endpoint)
    assert result.exit_code == 0, result.output
    assert kube.peers("kind-alpha") == {"beta": entry(2, beta.grpc_port, address=endpoint)}


async def test_missing_service_and_admin_certificate_are_named(kube: KubeCells) -> None:
    await kube.start("alpha")
    await kube.start("beta")
    kube.apis["kind-beta"].delete("v1", "Service", SERVICE, NS)
    result = await kube.run(*CONNECT)
    assert_failed(
        result,
        1,
        "kube context 'kind-beta': Service cellmesh/cellmesh-meshapi not found",
        "meshctl install --kube-context kind-beta",
    )
    shutil.rmtree(admin_tls_dir(kube.config, "kind-alpha"))
    result = await kube.run("status", "--kube-context", "kind-alpha")
    assert_failed(
        result, 1, "kube context 'kind-alpha': no admin certificate for meshctl in", "tls.crt"
    )


async def test_disconnect_removes_only_its_entries(kube: KubeCells) -> None:
    await kube.start("alpha")
    await kube.start("beta")
    assert (await kube.run(*CONNECT)).exit_code == 0
    # An entry another writer (an operator's kubectl) keeps in alpha's ConfigMap.
    cm = kube.configmap("kind-alpha")
    assert cm is not None
    gamma = entry(3, 7443)
    kube.apis["kind-alpha"].put({**cm, "data": {**cm["data"], "gamma": json.dumps(gamma)}})

    result = await kube.run(*DISCONNECT)
    assert result.exit_code == 0, result.output
    assert (
        "cell alpha: peer beta removed [ConfigMap cellmesh/cellmesh-peers, kube context kind-alpha]"
    ) in result.stdout
    assert "Disconnected alpha and beta (bidirectional)." in result.stdout
    assert kube.peers("kind-alpha") == {"gamma": gamma}
    assert kube.peers("kind-beta") == {}

    again = await kube.run(*DISCONNECT)
    assert again.exit_code == 0, again.output
    assert "alpha and beta are not connected; nothing to do." in again.stdout


async def test_unicast_over_kube_contexts(kube: KubeCells) -> None:
    alpha = await kube.start("alpha")
    beta = await kube.start("beta")
    result = await kube.run(*CONNECT, "--connection-mode", "unicast")
    assert result.exit_code == 0, result.output
    assert kube.peers("kind-alpha") == {"beta": entry(2, beta.grpc_port, export=False)}
    assert kube.peers("kind-beta") == {"alpha": entry(1, alpha.grpc_port, watch=False)}


async def test_preflight_runs_on_kube_contexts(kube: KubeCells) -> None:
    await kube.start("alpha")
    await kube.start("beta", pod="10.1.128.0/17")  # inside alpha's pod CIDR
    result = await kube.run(*CONNECT)
    assert_failed(result, 1, "pod CIDR 10.1.0.0/16 of cell 'alpha' overlaps pod CIDR 10.1.128.0/17")
    assert kube.configmap("kind-alpha") is None
    assert kube.configmap("kind-beta") is None


async def test_bad_configmap_entry_is_named_and_nothing_written(kube: KubeCells) -> None:
    await kube.start("alpha")
    await kube.start("beta")
    kube.apis["kind-beta"].put(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP, "namespace": NS},
         "data": {"gamma": '{"id": 300, "address": "x:1"}'}}
    )  # fmt: skip
    result = await kube.run(*CONNECT)
    assert_failed(
        result, 1, "kube context 'kind-beta': ConfigMap cellmesh/cellmesh-peers: data['gamma'].id"
    )
    assert kube.configmap("kind-alpha") is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(
            (*CONNECT, "--destination-endpoint", "no-port"), 2,
            "--destination-endpoint: server 'no-port' is not HOST:PORT", id="bad-endpoint",
        ),
        pytest.param(
            ("connect", "--kube-context", "kind-alpha", "--destination-kube-context", "nope"), 1,
            "kube context 'nope' not found", id="unknown-context",
        ),
        pytest.param(
            ("connect", "--kube-context", "kind-alpha", "--destination-context", "beta"), 2,
            "--destination-context cannot be combined with --kube-context", id="mixed",
        ),
        pytest.param(
            ("connect", "--destination-context", "beta", "--endpoint", "a:1"), 2,
            "--endpoint needs --kube-context", id="endpoint-without-kube",
        ),
        pytest.param(
            ("connect", "--kube-context", "kind-alpha"), 2,
            "--kube-context needs --destination-kube-context", id="no-destination",
        ),
        pytest.param(
            ("connect", "--kube-context", "kind-alpha", "--destination-kube-context",
             "kind-alpha"), 2, "are both 'kind-alpha'", id="same-context",
        ),
        pytest.param(
            ("status", "--endpoint", "a:1"), 2, "--endpoint needs --kube-context",
            id="status-endpoint-alone",
        ),
    ],
)  # fmt: skip
async def test_bad_input_names_the_problem(
    kube: KubeCells, args: tuple[str, ...], code: int, message: str
) -> None:
    await kube.start("alpha")
    result = await kube.run(*args)
    assert_failed(result, code, message)


async def test_status_and_services_by_kube_context(kube: KubeCells) -> None:
    alpha = await kube.start("alpha")
    result = await kube.run("status", "--kube-context", "kind-alpha", "-o", "json")
    doc = json.loads(result.stdout)
    assert doc["context"] == "kind-alpha"
    assert doc["server"] == f"127.0.0.1:{alpha.grpc_port}"
    assert doc["meshapi"]["reachable"] is True
    assert doc["meshapi"]["cell"] == "alpha"

    # --endpoint wins; the same document as through a meshctl context.
    kube.cells.add_context(
        "alpha", f"localhost:{alpha.grpc_port}", kube.cells.pki.tls("alpha", Role.ADMIN)
    )
    by_endpoint = await kube.run(
        "status", "--kube-context", "kind-alpha", "--endpoint", f"localhost:{alpha.grpc_port}",
        "-o", "json",
    )  # fmt: skip
    by_context = await kube.run("status", "--context", "alpha", "-o", "json")
    a, b = json.loads(by_endpoint.stdout), json.loads(by_context.stdout)
    assert a["server"] == b["server"] == f"localhost:{alpha.grpc_port}"
    assert a["meshapi"] == b["meshapi"] | {"heartbeat_age": a["meshapi"]["heartbeat_age"],
                                           "revision": a["meshapi"]["revision"]}  # fmt: skip

    services = await kube.run("services", "--kube-context", "kind-alpha", "-o", "json")
    assert services.exit_code == 0, services.output
    assert json.loads(services.stdout) == []


def test_connecting_peer_names_the_meshapi_port() -> None:
    """A peer stuck "connecting": the status names the seed's usual cause and the port."""
    now = time.time()
    agent = AgentStatus(
        cell="alpha", node="a1", updated_at=now, ready=False, reason="waiting for beta",
        peers=[PeerReport(cell="alpha", local=True, state="ready", synced=True),
               PeerReport(cell="beta", state="connecting", synced=False,
                          error_class="tcp", last_error="connect timed out")],
    )  # fmt: skip
    peer = Peer(cell="alpha", name="beta", id=2, address="nlb.example.com:7443")
    ctx = Context("alpha", "127.0.0.1:1", Path("/nonexistent"))
    doc = status_document(ctx, cell=("alpha", 1, 5), records=[agent, peer], error=None, now=now)
    assert "agent a1: cell beta is connecting (tcp: connect timed out)" in doc["problems"]
    (problem,) = doc["hints"]
    assert "TCP timeout to beta's meshapi at nlb.example.com:7443" in problem
    assert "allow TCP port 7443" in problem
    assert "security group / firewall" in problem


@pytest.mark.parametrize(
    ("dns", "ips", "host", "expected"),
    [
        pytest.param(["localhost"], ["127.0.0.1"], "127.0.0.1", None, id="address-covered"),
        pytest.param(["cellmesh-meshapi.cellmesh.svc", "meshapi.example"], [], "10.0.0.5",
                     "cellmesh-meshapi.cellmesh.svc", id="load-balancer-ip"),
        pytest.param(["*.elb.example", "meshapi.example"], [], "nlb-1.elb.example", None,
                     id="wildcard-covers"),
        pytest.param(["meshapi.example"], [], "nlb.elb.example", "meshapi.example",
                     id="first-dns-name"),
        pytest.param([], ["10.0.0.9"], "10.0.0.5", None, id="no-dns-name"),
    ],
)  # fmt: skip
def test_server_name_is_the_meshapi_certificates_name(
    pki: Pki, tmp_path: Path, dns: list[str], ips: list[str], host: str, expected: str | None
) -> None:
    """The name agents must verify when the address they dial is not in the certificate."""
    out = tmp_path / "meshapi"
    issue_certificate(ca_dir=pki.ca_dir, cell="alpha", role=Role.MESHAPI, out_dir=out,
                      dns_names=dns, ip_addresses=ips)  # fmt: skip
    der = (out / "tls.crt").read_bytes()
    assert choose_server_name(der, host) == expected
