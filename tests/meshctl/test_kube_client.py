"""``meshctl.kube.client.KubeClient`` with the real ``kubernetes`` client against the API double."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import meshctl.kube.client as module
from meshctl.kube.client import KubeClient, KubeContextError, KubeError
from meshctl.lab.kubeapi import KubeApiDouble, KubeApiThread

NS = "kube-client-test"


@pytest.fixture
def client(kubeconfig: Path) -> Iterator[KubeClient]:
    with KubeClient.from_context("cell-1", kubeconfig=kubeconfig) as kube:
        yield kube


def _service(name: str, *, labels: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "grpc", "port": 7443}]},
    }


def test_missing_context_lists_the_known_ones(kubeconfig: Path) -> None:
    with pytest.raises(KubeContextError, match=r"'cell-9' not found .*known contexts: cell-1"):
        KubeClient.from_context("cell-9", kubeconfig=kubeconfig)


def test_missing_kubeconfig_is_named(tmp_path: Path) -> None:
    with pytest.raises(KubeContextError, match=r"cannot read kubeconfig .*absent"):
        KubeClient.from_context("cell-1", kubeconfig=tmp_path / "absent")


def test_kubeconfig_env_and_current_context(
    kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with KubeClient.from_context(None) as kube:
        assert kube.context == "cell-1"
        assert "default" in {o["metadata"]["name"] for o in kube.list("v1", "Namespace")}


def test_apply_is_idempotent_and_get_list_delete(client: KubeClient) -> None:
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    created = client.apply(_service("meshapi", labels={"app": "a"}))
    again = client.apply(_service("meshapi", labels={"app": "a"}))
    assert created["metadata"]["resourceVersion"] == again["metadata"]["resourceVersion"]
    changed = client.apply(_service("meshapi", labels={"app": "b"}))
    assert changed["metadata"]["resourceVersion"] != again["metadata"]["resourceVersion"]
    client.apply(_service("other", labels={"app": "a"}))

    got = client.get("v1", "Service", "meshapi", NS)
    assert got is not None
    assert got["metadata"]["labels"] == {"app": "b"}
    assert client.get("v1", "Service", "absent", NS) is None
    names = sorted(o["metadata"]["name"] for o in client.list("v1", "Service", NS))
    assert names == ["meshapi", "other"]
    selected = client.list("v1", "Service", NS, label_selector="app=a")
    assert [(o["kind"], o["metadata"]["name"]) for o in selected] == [("Service", "other")]

    assert client.delete("v1", "Service", "meshapi", NS) is True
    assert client.delete("v1", "Service", "meshapi", NS) is False
    assert client.get("v1", "Service", "meshapi", NS) is None


def test_list_pages_through_continue(
    client: KubeClient, api: KubeApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    for i in range(12):
        api.put(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{i:02}", "namespace": NS},
            }
        )
    monkeypatch.setattr(module, "_LIST_PAGE", 5)
    names = [o["metadata"]["name"] for o in client.list("v1", "ConfigMap", NS)]
    assert names == [f"cm-{i:02}" for i in range(12)]


def test_apply_status_sets_the_load_balancer_ingress(client: KubeClient) -> None:
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    client.apply(_service("meshapi"))
    client.apply_status(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "meshapi", "namespace": NS},
            "status": {"loadBalancer": {"ingress": [{"hostname": "nlb.example.com"}]}},
        }
    )
    got = client.get("v1", "Service", "meshapi", NS)
    assert got is not None
    assert got["status"]["loadBalancer"]["ingress"] == [{"hostname": "nlb.example.com"}]


def test_errors_name_context_object_and_the_api_message(client: KubeClient) -> None:
    with pytest.raises(KubeError, match=r"context cell-1: .*Frob x: the API server does not serve"):
        client.get("v1", "Frob", "x")
    bad = _service("Bad_Name")
    with pytest.raises(
        KubeError, match=r"context cell-1: apply Service kube-client-test/Bad_Name: 422 .*DNS-1035"
    ) as info:
        client.apply(bad)
    assert info.value.status == 422
    with pytest.raises(KubeError, match=r"has no metadata\.name"):
        client.apply({"apiVersion": "v1", "kind": "Service", "metadata": {}})


def test_unreachable_server_is_named(tmp_path: Path) -> None:
    with KubeApiThread() as gone:
        path = gone.write_kubeconfig(tmp_path / "kubeconfig", context="gone")
    with (
        KubeClient.from_context("gone", kubeconfig=path) as kube,
        pytest.raises(KubeError, match=r"context gone: .*unreachable"),
    ):
        kube.list("v1", "Namespace")
