"""``meshctl apply|delete|services`` against a real meshapi (in process) with real etcd and certs.

The CLI calls ``asyncio.run``, so it runs in a worker thread while the meshapi serves on the
test's event loop. The meshapi answers ``List`` from its watch cache, which follows etcd a moment
after a write: reads that depend on a write are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from certs import Role
from meshcore.client import MeshClient
from meshcore.localetcd import LocalEtcd
from meshcore.model import Endpoint, EndpointPort
from meshctl.cli import cli
from meshctl.contexts import Context, add_context
from tests.conftest import MeshApiFactory, Pki

GLOBAL_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
  annotations:
    service.cilium.io/global: "true"
    service.cilium.io/affinity: local
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
"""
# meshctl refuses it; the server takes the default ('none') and reports the value.
SIDEWAYS_SERVICE = GLOBAL_SERVICE.replace("affinity: local", "affinity: sideways")

PLAIN_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: demo}
spec:
  clusterIPs: [10.96.0.11, "fd00::11"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: dns, port: 53, protocol: UDP}]
"""

BAD_PORT = """\
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: demo}
spec:
  clusterIP: 10.96.0.12
  ports: [{name: http, port: 70000}]
"""


class Mesh:
    """A running alpha meshapi and a meshctl config whose current context is its admin."""

    def __init__(self, config: Path, server: str, pki: Pki) -> None:
        self.config = config
        self.server = server
        self.pki = pki

    async def run(self, *args: str, stdin: str | None = None) -> Result:
        runner = CliRunner()
        argv = ["--config", str(self.config), *args]
        env: dict[str, str | None] = {"MESHCTL_CONTEXT": None, "MESHCTL_CONFIG": None}
        return await asyncio.to_thread(runner.invoke, cli, argv, input=stdin, env=env)

    async def services(self) -> list[dict[str, Any]]:
        result = await self.run("services", "-o", "json")
        assert result.exit_code == 0, result.output
        services: list[dict[str, Any]] = json.loads(result.stdout)
        return services

    async def wait_services(
        self, condition: Callable[[list[dict[str, Any]]], bool], *, within: float = 10.0
    ) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            services = await self.services()
            if condition(services):
                return services
            if loop.time() > deadline:
                raise AssertionError(f"no such services within {within}s; last: {services}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def mesh(pki: Pki, etcd: LocalEtcd, meshapi_factory: MeshApiFactory, tmp_path: Path) -> Mesh:
    app = await meshapi_factory("alpha", etcd)
    server = f"127.0.0.1:{app.grpc_port}"
    config = tmp_path / "meshctl.json"
    add_context(config, Context("alpha", server, pki.tls("alpha", Role.ADMIN)), use=True)
    return Mesh(config, server, pki)


def names(services: list[dict[str, Any]]) -> list[str]:
    return [f"{s['namespace']}/{s['name']}" for s in services]


async def test_apply_list_delete_global_service(mesh: Mesh, tmp_path: Path) -> None:
    manifest = tmp_path / "echo.yaml"
    manifest.write_text(SIDEWAYS_SERVICE)

    # meshctl refuses the unknown affinity (test_unknown_annotation_values_are_refused); another
    # client of the API gets the default and the warning, which `services` then shows.
    async with MeshClient(mesh.server, mesh.pki.tls("alpha", Role.ADMIN)) as client:
        applied = await client.apply_manifest(SIDEWAYS_SERVICE, source=str(manifest))
    assert applied.keys == ("cellmesh/v1/services/alpha/demo/echo",)
    assert applied.warnings[0].startswith(
        "demo/echo: service.cilium.io/affinity: unknown value 'sideways'"
    )

    # Two backends, one of them not ready, written as a standalone source would.
    async with MeshClient(mesh.server, mesh.pki.tls("alpha", Role.ADMIN)) as client:
        await client.write(
            puts=[
                Endpoint(
                    cell="alpha",
                    namespace="demo",
                    service="echo",
                    address=address,
                    node="n1",
                    ports=[EndpointPort(name="http", port=8080)],
                    ready=ready,
                )
                for address, ready in (("10.1.0.7", True), ("10.1.0.5", False))
            ]
        )

    services = await mesh.wait_services(lambda s: bool(s) and len(s[0]["endpoints"]) == 2)
    assert len(services) == 1
    echo = services[0]
    assert {k: echo[k] for k in ("cell", "namespace", "name", "global", "shared", "affinity")} == {
        "cell": "alpha",
        "namespace": "demo",
        "name": "echo",
        "global": True,
        "shared": True,
        "affinity": "none",
    }
    assert echo["frontends"] == [
        {"name": "http", "vip": "10.96.0.10", "port": 80, "protocol": "TCP"}
    ]
    assert len(echo["warnings"]) == 1
    assert "unknown value 'sideways'" in echo["warnings"][0]
    assert [(e["address"], e["ready"]) for e in echo["endpoints"]] == [
        ("10.1.0.5", False),
        ("10.1.0.7", True),
    ]
    assert echo["endpoints"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]

    table = await mesh.run("services")
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == [
        "NAMESPACE/NAME",
        "GLOBAL",
        "SHARED",
        "AFFINITY",
        "FRONTENDS",
        "BACKENDS",
    ]
    assert row.split() == ["demo/echo", "yes", "yes", "none", "10.96.0.10:80/TCP", "1/2"]
    assert "warning: demo/echo: service.cilium.io/affinity: unknown value" in table.stderr

    deleted = await mesh.run("delete", "-f", str(manifest))
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout == "service/demo/echo deleted\n"
    assert await mesh.wait_services(lambda s: s == []) == []


async def test_apply_from_stdin_and_several_files(mesh: Mesh, tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(PLAIN_SERVICE)
    applied = await mesh.run("apply", "-f", "-", "-f", str(plain), stdin=GLOBAL_SERVICE)
    assert applied.exit_code == 0, applied.output
    assert applied.stdout == "service/demo/echo applied\nservice/demo/plain applied\n"

    services = await mesh.wait_services(lambda s: len(s) == 2)
    assert names(services) == ["demo/echo", "demo/plain"]
    plain_service = services[1]
    assert (plain_service["global"], plain_service["shared"], plain_service["affinity"]) == (
        False,
        False,
        "none",
    )
    table = await mesh.run("services")
    assert "[fd00::11]:53/UDP" in table.stdout
    assert "10.96.0.11:53/UDP" in table.stdout


async def test_bad_manifest_names_file_and_field(mesh: Mesh, tmp_path: Path) -> None:
    manifest = tmp_path / "bad-port.yaml"
    manifest.write_text(BAD_PORT)
    result = await mesh.run("apply", "-f", str(manifest))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"rejected by {mesh.server}: {manifest}: spec.ports[0].port: 70000" in result.stderr
    assert await mesh.services() == []


async def test_invalid_yaml_and_empty_file(mesh: Mesh, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Service\n  bad: [indent\n")
    result = await mesh.run("apply", "-f", str(broken))
    assert result.exit_code == 1
    assert f"{broken}: line" in result.stderr
    assert "invalid YAML" in result.stderr


def refused(result: Result, *messages: str) -> None:
    """meshctl exited 1 with one clear line naming what is wrong, and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for message in messages:
        assert message in result.stderr, result.stderr
    assert len(result.stderr) < 1000, len(result.stderr)


@pytest.mark.parametrize("command", ["apply", "delete"])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "no documents: nothing to {command}", id="empty"),
        pytest.param("# only a comment\n---\n", "no documents", id="only-comments"),
        pytest.param(
            "apiVersion: apps/v1\nkind: Deployment\n---\nkind: ConfigMap\napiVersion: v1\n",
            "no Service documents (found document 1 apps/v1/Deployment, document 2 "
            "v1/ConfigMap): nothing to {command}",
            id="no-service-documents",
        ),
    ],
)
async def test_a_file_that_changes_nothing_is_refused(
    mesh: Mesh, tmp_path: Path, command: str, text: str, message: str
) -> None:
    manifest = tmp_path / "nothing.yaml"
    manifest.write_text(text)
    result = await mesh.run(command, "-f", str(manifest))
    refused(result, f"{manifest}: {message.format(command=command)}")


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        pytest.param(
            {"service.cilium.io/global": "yes"},
            "metadata.annotations['service.cilium.io/global']: unknown value 'yes' "
            "(allowed: 'true', 'false')",
            id="global-yes",
        ),
        pytest.param(
            {"io.cilium/global-service": "ture"},
            "metadata.annotations['io.cilium/global-service']: unknown value 'ture'",
            id="legacy-global-typo",
        ),
        pytest.param(
            {"service.cilium.io/global": "true", "service.cilium.io/shared": "no"},
            "metadata.annotations['service.cilium.io/shared']: unknown value 'no' "
            "(allowed: 'true', 'false')",
            id="shared-no",
        ),
        pytest.param(
            {"service.cilium.io/global": "true", "service.cilium.io/affinity": "sideways"},
            "metadata.annotations['service.cilium.io/affinity']: unknown value 'sideways' "
            "(allowed: 'local', 'remote', 'none')",
            id="affinity-sideways",
        ),
    ],
)
async def test_unknown_annotation_values_are_refused(
    mesh: Mesh, tmp_path: Path, annotations: dict[str, str], message: str
) -> None:
    manifest = tmp_path / "svc.yaml"
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "demo", "annotations": annotations},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    }
    # The refused Service is the second document: nothing of the file is applied.
    manifest.write_text(PLAIN_SERVICE + "---\n" + json.dumps(doc) + "\n")
    result = await mesh.run("apply", "-f", str(manifest))
    refused(result, f"{manifest}: line 9: document 2 (Service demo/echo): {message}")
    assert await mesh.services() == []


async def test_an_alias_bomb_is_refused_before_anything_is_sent(mesh: Mesh, tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    # Six levels (531,441 strings): enough to show it, and safe to run against the code before
    # the fix (it answered with a 3.8 MB warning; nine levels would exhaust the memory).
    for prev, name in zip("abcde", "bcdef", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join([*lines, "kind: *f", "apiVersion: v1", ""]))
    assert bomb.stat().st_size < 400
    result = await mesh.run("apply", "-f", str(bomb))
    refused(result, f"{bomb}: line 1: document 1: YAML aliases expand it to more than")
    assert await mesh.services() == []


async def test_missing_file_is_a_usage_error(mesh: Mesh, tmp_path: Path) -> None:
    result = await mesh.run("apply", "-f", str(tmp_path / "nowhere.yaml"))
    assert result.exit_code == 2
    assert "nowhere.yaml" in result.stderr


async def test_non_admin_certificate_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    agent_tls = mesh.pki.tls("alpha", Role.AGENT, node="n1")
    add_context(mesh.config, Context("agent", mesh.server, agent_tls))
    manifest = tmp_path / "echo.yaml"
    manifest.write_text(GLOBAL_SERVICE)
    result = await mesh.run("--context", "agent", "apply", "-f", str(manifest))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"access denied by {mesh.server}:" in result.stderr
    assert "agent of cell alpha is not an admin of cell alpha" in result.stderr
    assert await mesh.services() == []


async def test_unreachable_meshapi(mesh: Mesh) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tls = mesh.pki.tls("alpha", Role.ADMIN)
    add_context(mesh.config, Context("down", f"127.0.0.1:{port}", tls))
    result = await mesh.run("--context", "down", "services")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"cannot reach meshapi at 127.0.0.1:{port} (context 'down')" in result.stderr


async def test_help_lists_every_command() -> None:
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["--help"])
    assert result.exit_code == 0
    for command in ("apply", "ca", "certs", "context", "delete", "services"):
        assert f"  {command} " in result.stdout
