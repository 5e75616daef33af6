"""`meshctl ca …` and `meshctl certs …` through click's test runner, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from certs import identity_from_certificate, load_bundle
from meshctl.certs_commands import ca_group, certs_group

TD = "mesh.example.org"


def _issue(ca_dir: Path, out: Path, *extra: str, role: str, cell: str = "cell-a") -> list[str]:
    """argv for `certs issue`."""
    return ["issue", "--ca", str(ca_dir), "--cell", cell, "--role", role, "--out", str(out), *extra]


def _run(group: click.Group, args: list[str]) -> Result:
    return CliRunner().invoke(group, args)


def _ok(group: click.Group, args: list[str]) -> Result:
    result = _run(group, args)
    assert result.exit_code == 0, result.output
    return result


def _fails(group: click.Group, args: list[str], *fragments: str) -> Result:
    result = _run(group, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # no crash
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output
    return result


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    out = tmp_path / "ca"
    result = _ok(ca_group, ["init", "--trust-domain", TD, "--out", str(out), "--days", "100"])
    assert f"trust domain {TD}" in result.output
    assert "(100 days)" in result.output
    return out


def test_ca_init_writes_the_ca(ca_dir: Path) -> None:
    assert (ca_dir / "ca.crt").exists()
    assert (ca_dir / "ca.key").stat().st_mode & 0o077 == 0


def test_ca_init_refuses_an_existing_ca(ca_dir: Path) -> None:
    result = _fails(ca_group, ["init", "--trust-domain", TD, "--out", str(ca_dir)], "already")
    assert result.exit_code == 1


def test_certs_issue_agent_with_node(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "agent"

    result = _ok(
        certs_group,
        _issue(ca_dir, out, "--node", "node-1", "--days", "10", role="agent"),
    )

    assert f"Issued spiffe://{TD}/cell/cell-a/agent for node node-1" in result.output
    assert "(10 days)" in result.output
    identity = identity_from_certificate((out / "tls.crt").read_bytes(), trust_domain=TD)
    assert (identity.cell, identity.role.value, identity.node) == ("cell-a", "agent", "node-1")
    assert (out / "tls.key").stat().st_mode & 0o077 == 0


def test_certs_issue_meshapi_and_clipping_note(ca_dir: Path, tmp_path: Path) -> None:
    result = _ok(
        certs_group,
        _issue(
            ca_dir, tmp_path / "api", "--dns", "meshapi.local", "--ip", "10.1.2.3", role="meshapi"
        ),
    )

    assert "SANs:       meshapi.local, 10.1.2.3" in result.output
    assert "validity clipped to the CA's not-after" in result.output


def test_certs_issue_force_replaces(ca_dir: Path, tmp_path: Path) -> None:
    args = _issue(ca_dir, tmp_path, role="peer")
    _ok(certs_group, args)

    _fails(certs_group, args, "refusing to overwrite")
    _ok(certs_group, [*args, "--force"])


def test_certs_inspect_text(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "agent"
    _ok(
        certs_group,
        _issue(ca_dir, out, "--node", "node-9", "--days", "10", role="agent"),
    )

    result = _ok(certs_group, ["inspect", str(out / "tls.crt")])

    lines = dict(line.split(":", 1) for line in result.output.splitlines())
    assert lines["SPIFFE ID"].strip() == f"spiffe://{TD}/cell/cell-a/agent"
    assert lines["Cell"].strip() == "cell-a"
    assert lines["Role"].strip() == "agent"
    assert lines["Node"].strip() == "node-9"
    assert lines["Days left"].strip() in {"9 (expiring)", "10 (expiring)"}
    assert lines["Subject"].strip() == "CN=node-9"
    assert "Not after" in lines


def test_certs_inspect_json(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "api"
    _ok(certs_group, _issue(ca_dir, out, role="meshapi"))

    result = _ok(certs_group, ["inspect", "-o", "json", str(out / "tls.crt")])

    data = json.loads(result.output)
    assert set(data) == {
        "path",
        "subject",
        "issuer",
        "serial",
        "sha256_fingerprint",
        "is_ca",
        "spiffe_id",
        "trust_domain",
        "cell",
        "role",
        "node",
        "dns_names",
        "ip_addresses",
        "uris",
        "not_before",
        "not_after",
        "days_left",
        "status",
        "identity_error",
    }
    assert data["spiffe_id"] == f"spiffe://{TD}/cell/cell-a/meshapi"
    assert (data["cell"], data["role"], data["node"]) == ("cell-a", "meshapi", None)
    assert data["dns_names"] == ["localhost"]
    assert data["ip_addresses"] == ["127.0.0.1"]
    assert data["not_after"].endswith("Z")
    assert data["is_ca"] is False


def test_certs_inspect_ca_json(ca_dir: Path) -> None:
    data = json.loads(
        _ok(certs_group, ["inspect", "--output", "json", str(ca_dir / "ca.crt")]).output
    )

    assert (data["is_ca"], data["trust_domain"], data["role"]) == (True, TD, None)


def test_ca_add_to_bundle(ca_dir: Path, tmp_path: Path) -> None:
    new_ca = tmp_path / "new-ca"
    _ok(ca_group, ["init", "--trust-domain", TD, "--out", str(new_ca)])
    bundle = tmp_path / "bundle.crt"

    first = _ok(
        ca_group, ["add-to-bundle", "--bundle", str(bundle), "--ca-cert", str(ca_dir / "ca.crt")]
    )
    second = _ok(
        ca_group, ["add-to-bundle", "--bundle", str(bundle), "--ca-cert", str(new_ca / "ca.crt")]
    )
    again = _ok(
        ca_group, ["add-to-bundle", "--bundle", str(bundle), "--ca-cert", str(new_ca / "ca.crt")]
    )

    assert "now trusts 1 CA(s)" in first.output
    assert "now trusts 2 CA(s)" in second.output
    assert "nothing changed" in again.output
    assert len(load_bundle(bundle)) == 2


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(
            ["--cell", "Cell-A"], ["--cell", "invalid cell name 'Cell-A'"], id="cell-uppercase"
        ),
        pytest.param(["--cell", "c" * 33], ["--cell", "at most 32"], id="cell-too-long"),
        pytest.param(["--cell", ""], ["--cell", "cell name is empty"], id="cell-empty"),
        pytest.param(["--role", "root"], ["--role", "'root' is not one of"], id="role-unknown"),
        pytest.param(["--days", "0"], ["--days", "0"], id="days-zero"),
        pytest.param(["--days", "soon"], ["--days", "soon"], id="days-not-a-number"),
        pytest.param(["--ip", "10.0.0.256"], ["--ip", "10.0.0.256"], id="ip-bad"),
        pytest.param(["--dns", "bad name"], ["--dns", "bad name"], id="dns-bad"),
        pytest.param(["--node", "Node_1"], ["--node", "Node_1"], id="node-bad"),
        pytest.param(
            ["--role", "admin", "--node", "node-1"],
            ["admin certificates cannot have one"],
            id="node-on-admin",
        ),
        pytest.param(
            ["--role", "agent", "--dns", "x.local"],
            ["DNS and IP SANs are for meshapi"],
            id="dns-on-agent",
        ),
        pytest.param(["--frobnicate"], ["No such option"], id="unknown-flag"),
    ],
)
def test_certs_issue_bad_input(
    ca_dir: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    flags = {"--cell": "cell-a", "--role": "meshapi", "--out": str(tmp_path / "out")}
    defaults = [x for flag, value in flags.items() if flag not in args for x in (flag, value)]
    argv = ["issue", "--ca", str(ca_dir), *defaults, *args]

    result = _fails(certs_group, argv, *fragments)

    assert result.exit_code == 2
    assert not (tmp_path / "out" / "tls.key").exists()


def test_certs_issue_missing_ca_dir(tmp_path: Path) -> None:
    _fails(
        certs_group,
        _issue(tmp_path / "nope", tmp_path / "out", role="agent"),
        "--ca",
        "does not exist",
    )


def test_certs_issue_empty_ca_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _fails(
        certs_group,
        _issue(tmp_path / "empty", tmp_path / "out", role="agent"),
        "ca.crt does not exist",
    )
    assert result.exit_code == 1


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(
            ["init", "--trust-domain", "Mesh.Local", "--out", "x"],
            ["--trust-domain", "'Mesh.Local'"],
            id="trust-domain-uppercase",
        ),
        pytest.param(["init", "--out", "x"], ["--trust-domain"], id="trust-domain-missing"),
        pytest.param(
            ["init", "--trust-domain", "mesh.local", "--out", "x", "--days", "-1"],
            ["--days", "-1"],
            id="days-negative",
        ),
        pytest.param(
            ["add-to-bundle", "--bundle", "b.crt", "--ca-cert", "missing.crt"],
            ["--ca-cert", "missing.crt"],
            id="ca-cert-missing",
        ),
    ],
)
def test_ca_bad_input(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        _fails(ca_group, args, *fragments)
    assert not (tmp_path / "x").exists()


def test_add_to_bundle_refuses_a_leaf(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "agent"
    _ok(certs_group, _issue(ca_dir, out, role="agent"))

    result = _fails(
        ca_group,
        ["add-to-bundle", "--bundle", str(tmp_path / "b.crt"), "--ca-cert", str(out / "tls.crt")],
        "is not a CA certificate",
    )
    assert result.exit_code == 1


def test_inspect_bad_input(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("hello")

    _fails(certs_group, ["inspect", str(garbage)], "not a PEM or DER")
    _fails(certs_group, ["inspect", str(tmp_path / "missing.crt")], "missing.crt")
    _fails(certs_group, ["inspect", "-o", "yaml", str(garbage)], "'yaml' is not one of")
