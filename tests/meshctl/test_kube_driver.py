"""The connectivity suite's Kubernetes driver (``meshctl.kube.driver.KubeDriver``).

The objects it makes validate strictly against the Kubernetes schemas; the CLI refuses what it
cannot do (exec into real clusters' pods) by name; and on one real lab fed through Kubernetes
(``meshctl lab up --source kubernetes``: an API double per cell, meshapis watching them, real
agents and pods) the driver's Pods and EndpointSlices become the cell's endpoint records, a
readiness change follows, the suite passes through it, and nothing it made is left.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from click.testing import CliRunner

from e2e.driver import PodSpec, PortSpec
from e2e.environment import NAMESPACE, POD_PORTS, ServiceSpec, service_manifest
from meshctl.cli import cli
from meshctl.kube.client import KubeClient
from meshctl.kube.driver import KubeDriver, KubeDriverError
from meshctl.kube.suiteobjects import (
    MANAGED_BY,
    SuiteObjectError,
    endpoint_slice,
    namespace_object,
    pod_object,
    pod_status,
    service_object,
)
from meshctl.lab.kuberuntime import LabPodRuntime
from tests.lab.conftest import Lab, cleaned_up, new_lab, wait_for

KUBERNETES_VERSION = "1.32"


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(namespace_object(NAMESPACE), id="namespace"),
        pytest.param(
            pod_object(namespace=NAMESPACE, cell="alpha", node="node0", name="client-0",
                       ports=POD_PORTS),
            id="pod",
        ),
        pytest.param(
            {**pod_status(namespace=NAMESPACE, name="client-0", address="10.1.1.2", ready=True),
             "spec": {"containers": [{"name": "echo"}]}},
            id="pod-status",
        ),
        pytest.param(
            endpoint_slice(namespace=NAMESPACE, service="echo", pod_namespace=NAMESPACE,
                           pod="echo-a", node="node0", address="10.1.1.3", ports=POD_PORTS,
                           ready=False),
            id="endpointslice",
        ),
        pytest.param(
            service_object(service_manifest("echo", "10.96.240.10", ServiceSpec(affinity="local"))),
            id="service",
        ),
    ],
)  # fmt: skip
def test_objects_validate_strictly(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_slice_is_published_as_its_selector_less_service_manager() -> None:
    obj = endpoint_slice(namespace=NAMESPACE, service="echo", pod_namespace=NAMESPACE,
                         pod="echo-a", node="node1", address="10.1.2.3",
                         ports=[PortSpec("http", 8080, "TCP")], ready=False)  # fmt: skip
    labels = obj["metadata"]["labels"]
    assert labels["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
    assert labels["kubernetes.io/service-name"] == "echo"
    (endpoint,) = obj["endpoints"]
    assert endpoint["nodeName"] == "node1"
    assert endpoint["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert obj["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        pytest.param("{", "not YAML/JSON", id="syntax"),
        pytest.param('{"apiVersion": "v1", "kind": "Pod"}', "not a v1 Service", id="kind"),
        pytest.param('{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}',
                     "no metadata.name or metadata.namespace", id="namespace"),
    ],
)  # fmt: skip
def test_bad_suite_manifest_is_named(manifest: str, message: str) -> None:
    with pytest.raises(SuiteObjectError, match=message):
        service_object(manifest)


def test_contexts_outside_a_lab_are_refused_by_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["--config", str(tmp_path / "meshctl.json"), "connectivity", "test", "--multi-cluster",
         "--kube-context", "prod-eu", "--destination-kube-context", "prod-us"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "kube context(s) 'prod-eu', 'prod-us' belong to no lab" in result.stderr
    assert "running the suite in real clusters" in result.stderr
    assert "is not supported yet" in result.stderr
    assert "Traceback" not in result.output


# ---- on a lab fed through Kubernetes -----------------------------------------------------------


@pytest.fixture(scope="module")
def kube_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = new_lab(tmp_path_factory.mktemp("kubedriver"))
    with cleaned_up([lab]):
        up = lab.lab("up", "--source", "kubernetes", "--cells", "2", "--nodes", "2",
                     "--pods-per-node", "0", "--wait")  # fmt: skip
        assert up.returncode == 0, up.stderr
        connect = lab.meshctl("connect", "--kube-context", f"{lab.name}-alpha",
                              "--destination-kube-context", f"{lab.name}-beta",
                              extra_env={"KUBECONFIG": kubeconfig(lab)})  # fmt: skip
        assert connect.returncode == 0, connect.stderr
        yield lab


def kubeconfig(lab: Lab) -> str:
    return f"/run/cellmesh/lab/{lab.name}/kubeconfig"


def made_by_driver(lab: Lab) -> dict[str, list[str]]:
    """Per kube context: what the driver's label marks, and its namespace if it is there."""
    found: dict[str, list[str]] = {}
    for cell in ("alpha", "beta"):
        ctx = f"{lab.name}-{cell}"
        with KubeClient.from_context(ctx, kubeconfig=Path(kubeconfig(lab))) as client:
            selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
            found[ctx] = [
                f"{kind}/{item['metadata']['name']}"
                for api_version, kind in (("v1", "Namespace"), ("v1", "Pod"),
                                          ("discovery.k8s.io/v1", "EndpointSlice"),
                                          ("v1", "Service"))
                for item in client.list(api_version, kind, label_selector=selector)
            ]  # fmt: skip
    return found


def test_pods_become_endpoints_and_everything_goes_at_close(kube_lab: Lab) -> None:
    driver = KubeDriver(LabPodRuntime(kube_lab.name, kube_lab.config), config_path=kube_lab.config)
    admin = driver.service_admin()
    try:
        admin.apply("alpha", service_manifest("echo", "10.96.240.10", ServiceSpec()))
        pod = driver.add_pod(PodSpec("alpha", "node1", "echo-a", [(NAMESPACE, "echo")], POD_PORTS))
        assert pod.address.startswith("10.1.")
        client = driver.client("alpha")
        stored = client.get("v1", "Pod", "echo-a", NAMESPACE)
        assert stored is not None
        assert (stored["spec"]["nodeName"], stored["status"]["podIP"]) == ("node1", pod.address)

        def endpoint_ready() -> bool | None:
            found = [e for e in admin.endpoints("alpha") if str(e.address) == pod.address]
            return found[0].ready if found else None

        wait_for("the pod's endpoint record", lambda: endpoint_ready() is True)
        assert [s.name for s in admin.services("alpha")] == ["echo"]
        driver.set_ready("alpha", "node1", "echo-a", False)
        wait_for("the endpoint not ready", lambda: endpoint_ready() is False)
        with pytest.raises(KubeDriverError, match="no pod alpha/node0/nope"):
            driver.set_ready("alpha", "node0", "nope", True)

        driver.delete_pod("alpha", "node1", "echo-a")
        driver.delete_pod("alpha", "node1", "echo-a")  # idempotent
        wait_for("the endpoint gone", lambda: endpoint_ready() is None)
        assert client.list("discovery.k8s.io/v1", "EndpointSlice", NAMESPACE) == []
        driver.add_pod(PodSpec("beta", "node0", "left-over", [], POD_PORTS))
    finally:
        errors = driver.close()
    assert errors == []
    assert made_by_driver(kube_lab) == {f"{kube_lab.name}-alpha": [], f"{kube_lab.name}-beta": []}
    state = json.loads(Path(f"/run/cellmesh/lab/{kube_lab.name}/state.json").read_text())
    assert [p for c in state["cells"] for n in c["nodes"] for p in n["pods"]] == []


def test_the_suite_runs_through_the_kubernetes_driver(kube_lab: Lab) -> None:
    done = kube_lab.meshctl(
        "connectivity", "test", "--multi-cluster",
        "--kube-context", f"{kube_lab.name}-alpha",
        "--destination-kube-context", f"{kube_lab.name}-beta",
        "--test", "pod-to-pod/cross-cell/tcp", "--test", "global-service/both-cells",
        "-o", "json",
        extra_env={"KUBECONFIG": kubeconfig(kube_lab)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [(t["name"], t["result"]) for t in report["results"]] == [
        ("pod-to-pod/cross-cell/tcp", "passed"),
        ("global-service/both-cells", "passed"),
    ]
    assert report["cleanup_errors"] == []
    assert made_by_driver(kube_lab) == {
        f"{kube_lab.name}-alpha": [],
        f"{kube_lab.name}-beta": [],
    }
