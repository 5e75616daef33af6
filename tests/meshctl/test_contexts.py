"""meshctl contexts: the library (``meshctl.contexts``) and ``meshctl context ...`` on a tmp file.

TLS directories are real ones from the session PKI; no meshapi is needed here.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from certs import Role
from meshctl.cli import cli
from meshctl.contexts import (
    ConfigFileError,
    Context,
    InvalidContextError,
    MeshctlConfig,
    UnknownContextError,
    add_context,
    delete_context,
    load_config,
    resolve_context,
    save_config,
    use_context,
)
from tests.conftest import Pki


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "cfg" / "meshctl.json"


@pytest.fixture
def admin_tls(pki: Pki) -> Path:
    return pki.tls("alpha", Role.ADMIN)


def run(config: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    base: dict[str, str | None] = {"MESHCTL_CONTEXT": None, "MESHCTL_CONFIG": None}
    return CliRunner().invoke(cli, ["--config", str(config), *args], env={**base, **(env or {})})


def assert_clean_failure(result: Result, *fragments: str, code: int = 1) -> None:
    """Failed with ``code``, a message holding every fragment, and no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_context_roundtrip(config: Path, admin_tls: Path, pki: Pki) -> None:
    beta_tls = pki.tls("beta", Role.ADMIN)
    added = run(
        config, "context", "add", "alpha", "--server", "127.0.0.1:7443",
        "--tls-dir", str(admin_tls), "--use",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "'alpha' added" in added.stdout
    added = run(
        config, "context", "add", "beta", "--server", "meshapi.beta.example:443",
        "--tls-dir", str(beta_tls), "--server-name", "meshapi.beta.svc",
    )  # fmt: skip
    assert added.exit_code == 0, added.output

    table = run(config, "context", "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CURRENT", "NAME", "SERVER", "SERVER-NAME", "TLS-DIR"]
    assert lines[1].split()[:3] == ["*", "alpha", "127.0.0.1:7443"]
    assert lines[2].split()[:3] == ["beta", "meshapi.beta.example:443", "meshapi.beta.svc"]

    listed = json.loads(run(config, "context", "list", "-o", "json").stdout)
    assert listed == {
        "current": "alpha",
        "contexts": [
            {
                "name": "alpha",
                "current": True,
                "server": "127.0.0.1:7443",
                "tls_dir": str(admin_tls.absolute()),
                "server_name": None,
            },
            {
                "name": "beta",
                "current": False,
                "server": "meshapi.beta.example:443",
                "tls_dir": str(beta_tls.absolute()),
                "server_name": "meshapi.beta.svc",
            },
        ],
    }

    used = run(config, "context", "use", "beta")
    assert used.exit_code == 0, used.output
    assert json.loads(run(config, "context", "list", "-o", "json").stdout)["current"] == "beta"

    deleted = run(config, "context", "delete", "beta")
    assert deleted.exit_code == 0, deleted.output
    assert "no context is current" in deleted.stdout
    after = json.loads(run(config, "context", "list", "-o", "json").stdout)
    assert after["current"] is None
    assert [c["name"] for c in after["contexts"]] == ["alpha"]

    # The file itself: the documented JSON shape, private, no temporary file left behind.
    assert json.loads(config.read_text()) == {
        "current": None,
        "contexts": {
            "alpha": {"server": "127.0.0.1:7443", "tls_dir": str(admin_tls), "server_name": None}
        },
    }
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert [p.name for p in config.parent.iterdir()] == ["meshctl.json"]


def test_library_add_resolve_replace(config: Path, admin_tls: Path) -> None:
    assert load_config(config) == MeshctlConfig()  # a missing file is an empty config
    add_context(config, Context("alpha", "127.0.0.1:1", admin_tls))
    with pytest.raises(UnknownContextError, match="no context selected"):
        resolve_context(config, None)
    add_context(config, Context("alpha", "localhost:7443", admin_tls, "meshapi"), use=True)
    ctx = resolve_context(config, None)
    assert ctx == Context("alpha", "localhost:7443", admin_tls.absolute(), "meshapi")
    assert resolve_context(config, "alpha") == ctx
    use_context(config, "alpha")
    assert delete_context(config, "alpha") == MeshctlConfig()


def test_relative_tls_dir_is_stored_absolute(
    config: Path, admin_tls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(admin_tls.parent)
    add_context(config, Context("alpha", "127.0.0.1:7443", Path(admin_tls.name)))
    assert resolve_context(config, "alpha").tls_dir == admin_tls.absolute()


def test_env_selects_config_and_context(config: Path, admin_tls: Path) -> None:
    add_context(config, Context("alpha", "127.0.0.1:7443", admin_tls))
    result = CliRunner().invoke(
        cli,
        ["services"],
        env={"MESHCTL_CONFIG": str(config), "MESHCTL_CONTEXT": "nope"},
    )
    assert_clean_failure(result, "unknown context 'nope' (known: alpha)")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["Alpha", "--server", "h:1"], "not a DNS label", id="name-uppercase"),
        pytest.param(["a_b", "--server", "h:1"], "not a DNS label", id="name-underscore"),
        pytest.param(["a", "--server", "nohost"], "is not HOST:PORT", id="server-no-port"),
        pytest.param(["a", "--server", ":80"], "is not HOST:PORT", id="server-no-host"),
        pytest.param(["a", "--server", "h:0"], "not a number 1-65535", id="port-zero"),
        pytest.param(["a", "--server", "h:70000"], "not a number 1-65535", id="port-too-big"),
        pytest.param(["a", "--server", "h:http"], "not a number 1-65535", id="port-name"),
        pytest.param(["a", "--server", "fd00::1:80"], "[ADDR]:PORT", id="ipv6-no-brackets"),
        pytest.param(["a", "--server", "[zz::1]:80"], "not an IPv6 address", id="bad-ipv6"),
        pytest.param(["a", "--server", "bad_host:80"], "not a host name", id="bad-host"),
        pytest.param(["a", "--server", "300.1.1.1:80"], "not a host name", id="bad-ipv4"),
        pytest.param(
            ["a", "--server", "h:1", "--server-name", "Not Valid"],
            "is not a DNS name",
            id="bad-server-name",
        ),
    ],
)
def test_add_rejects_bad_input(
    config: Path, admin_tls: Path, args: list[str], fragment: str
) -> None:
    result = run(config, "context", "add", *args, "--tls-dir", str(admin_tls))
    assert_clean_failure(result, fragment, code=2)
    assert not config.exists()


def test_add_rejects_incomplete_tls_dir(config: Path, tmp_path: Path, admin_tls: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "ca.crt").write_bytes((admin_tls / "ca.crt").read_bytes())
    result = run(config, "context", "add", "a", "--server", "h:1", "--tls-dir", str(partial))
    assert_clean_failure(result, f"TLS directory {partial} is missing tls.crt, tls.key", code=2)

    result = run(
        config, "context", "add", "a", "--server", "h:1", "--tls-dir", str(tmp_path / "nowhere")
    )
    assert_clean_failure(result, "does not exist", code=2)


def test_unknown_context_lists_known_ones(config: Path, admin_tls: Path) -> None:
    add_context(config, Context("alpha", "127.0.0.1:1", admin_tls))
    add_context(config, Context("beta", "127.0.0.1:2", admin_tls))
    for args in (["context", "use", "gamma"], ["context", "delete", "gamma"]):
        assert_clean_failure(run(config, *args), "unknown context 'gamma' (known: alpha, beta)")
    assert_clean_failure(run(config, "--context", "gamma", "services"), "unknown context 'gamma'")
    assert_clean_failure(run(config, "services"), "no context selected", "known: alpha, beta")


def test_no_contexts_at_all(config: Path) -> None:
    assert_clean_failure(run(config, "services"), "add one with 'meshctl context add'")
    listed = run(config, "context", "list")
    assert listed.exit_code == 0
    assert "No contexts" in listed.stderr


def test_tls_dir_removed_after_add(config: Path, tmp_path: Path, admin_tls: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tls / name).write_bytes((admin_tls / name).read_bytes())
    add_context(config, Context("alpha", "127.0.0.1:1", tls), use=True)
    (tls / "tls.key").unlink()
    assert_clean_failure(run(config, "services"), "context 'alpha'", "missing tls.key")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("{not json", "is not valid JSON (line 1", id="syntax"),
        pytest.param("", "is not valid JSON", id="empty"),
        pytest.param("[]", "expected a JSON object", id="list"),
        pytest.param('{"contexts": []}', "contexts: expected an object", id="contexts-list"),
        pytest.param('{"current": "a", "contexts": {}}', "current context 'a'", id="dangling"),
        pytest.param('{"current": 3}', "current: expected a string", id="current-number"),
        pytest.param('{"colour": 1}', "unknown field(s) colour", id="extra-field"),
        pytest.param(
            '{"contexts": {"a": {"server": "h:1"}}}', "contexts.a.tls_dir", id="no-tls-dir"
        ),
        pytest.param(
            '{"contexts": {"a": {"server": "h", "tls_dir": "/x"}}}',
            "is not HOST:PORT",
            id="bad-server",
        ),
        pytest.param(
            '{"contexts": {"A": {"server": "h:1", "tls_dir": "/x"}}}',
            "not a DNS label",
            id="bad-name",
        ),
        pytest.param('{"contexts": {"a": 1}}', "contexts.a: expected an object", id="entry"),
    ],
)
def test_corrupt_config_is_a_clear_error(config: Path, text: str, fragment: str) -> None:
    config.parent.mkdir(parents=True)
    config.write_text(text)
    with pytest.raises(ConfigFileError, match=str(config)) as raised:
        load_config(config)
    assert fragment in str(raised.value)
    for args in (["context", "list"], ["services"], ["context", "use", "a"]):
        assert_clean_failure(run(config, *args), str(config), fragment)


def test_unreadable_config_names_the_file(tmp_path: Path) -> None:
    parent = tmp_path / "a-file"
    parent.write_text("")
    config = parent / "meshctl.json"
    assert_clean_failure(run(config, "context", "list"), f"cannot read config file {config}")


def test_save_rejects_dangling_current(config: Path) -> None:
    with pytest.raises(UnknownContextError):
        save_config(config, MeshctlConfig(current="ghost"))
    assert not config.exists()


def test_context_rejects_bad_fields_in_library() -> None:
    with pytest.raises(InvalidContextError, match="port '99999'"):
        Context("alpha", "127.0.0.1:99999", Path("/tmp"))
