"""``remotevss shadow``: parsing, credentials, exit codes, output and script mode (fake servers)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from remotevss.cli import build_parser
from remotevss.client import cli as shadow_cli
from remotevss.client.cli import Session, Settings
from remotevss.client.errors import UsageError
from remotevss.fsrvp.constants import HResult, Opnum
from remotevss.fsrvp.machine import Mode
from tests.unit.fsrvp_fake import FakeNetwork, FakeServer


@pytest.fixture
def net() -> FakeNetwork:
    n = FakeNetwork()
    n.add(FakeServer({"fs1"}, {"data": "/v1", "home": "/v2"}, Mode.SAMBA))
    return n


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REMOTEVSS_CLIENT_STATE", str(tmp_path / "state.sqlite3"))
    for var in ("REMOTEVSS_PASSWORD", "REMOTEVSS_USER", "KRB5CCNAME"):
        monkeypatch.delenv(var, raising=False)


def run(net: FakeNetwork | None, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["shadow", *argv])
    out, err = io.StringIO(), io.StringIO()
    rc = shadow_cli.run(args, connector=net.connector() if net else None, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_options_before_or_after_the_command() -> None:
    p = build_parser()
    a = p.parse_args(["shadow", "-U", "u%p", "-p", "1445", "list", "--json"])
    b = p.parse_args(["shadow", "list", "-U", "u%p", "-p", "1445", "--json"])
    for args in (a, b):
        s = Settings.from_args(args)
        assert (s.user, s.port, s.json, s.auth_level) == ("u%p", 1445, True, "privacy")
    c = p.parse_args(["shadow", "--auth-level", "integrity", "create", r"\\h\s"])
    assert Settings.from_args(c).auth_level == "integrity"  # not overwritten by the command


@pytest.mark.parametrize(
    ("user", "env", "expected"),
    [
        ("alice%secret", {}, ("alice", "secret", "")),
        ("CORP\\alice%secret", {}, ("alice", "secret", "CORP")),
        ("CORP/alice%pw%with%percent", {}, ("alice", "pw%with%percent", "CORP")),
        ("alice@corp.example%x", {}, ("alice", "x", "corp.example")),
        ("alice", {"REMOTEVSS_PASSWORD": "fromenv"}, ("alice", "fromenv", "")),
        (None, {"REMOTEVSS_USER": "bob", "REMOTEVSS_PASSWORD": "pw"}, ("bob", "pw", "")),
    ],
)
def test_credentials(
    monkeypatch: pytest.MonkeyPatch,
    user: str | None,
    env: dict[str, str],
    expected: tuple[str, str, str],
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    c = Session(Settings(user=user)).credentials()
    assert (c.username, c.password, c.domain) == expected
    assert c.use_kerberos is False
    assert "secret" not in repr(c)


def test_credentials_from_file_and_hash(tmp_path: Path) -> None:
    f = tmp_path / "auth"
    f.write_text("username = carol\npassword = p=q\ndomain = WG\n")
    c = Session(Settings(authentication_file=str(f))).credentials()
    assert (c.username, c.password, c.domain) == ("carol", "p=q", "WG")
    h = "aad3b435b51404eeaad3b435b51404ee:" + "0" * 31 + "1"
    c = Session(Settings(user="u", nt_hash=h)).credentials()
    assert c.nt_hash == "0" * 31 + "1" and c.password == ""
    with pytest.raises(UsageError, match="32 hex"):
        Session(Settings(user="u", nt_hash="xyz")).credentials()


def test_credentials_kerberos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cc = tmp_path / "cc"
    cc.write_bytes(b"\x05\x04")
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{cc}")
    c = Session(Settings()).credentials()  # a ccache and no password: Kerberos
    assert c.use_kerberos is True
    c = Session(Settings(user="u%p")).credentials()  # a password wins
    assert c.use_kerberos is False
    c = Session(Settings(kerberos=False, user="u%p")).credentials()
    assert c.use_kerberos is False
    monkeypatch.setenv("KRB5CCNAME", "KEYRING:persistent:0")
    with pytest.raises(UsageError, match="no ticket"):
        Session(Settings(kerberos=True)).credentials()


def test_missing_credentials_exit_2(net: FakeNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    rc, out, err = run(net, "query", r"\\fs1\data")
    assert rc == 2 and "no credentials" in err
    rc, out, err = run(net, "-U", "root", "query", r"\\fs1\data")
    assert rc == 2 and "no password for root" in err


def test_bad_unc_and_unknown_id(net: FakeNetwork) -> None:
    rc, _, err = run(net, "-U", "u%p", "create", r"\\fs1\data\sub")
    assert rc == 2 and r"bad share path \\fs1\data\sub: a path inside a share" in err
    rc, _, err = run(net, "-U", "u%p", "delete", "{11111111-2222-3333-4444-555555555555}")
    assert rc == 5 and "no shadow copy set or shadow copy" in err
    rc, _, err = run(net, "-U", "u%p", "delete", "not-a-guid")
    assert rc == 2 and "not a GUID" in err
    rc, _, err = run(net, "-U", "u%p")
    assert rc == 2 and "a command is needed" in err


def test_add_create_list_expose_recover_delete(net: FakeNetwork) -> None:
    srv = net.servers["fs1"]
    rc, out, _ = run(net, "-U", "u%p", "add", r"\\FS1\data")
    assert rc == 0 and r"added: \\fs1\data" in out
    rc, out, _ = run(net, "-U", "u%p", "add", "--no-check", r"\\fs1\data", r"\\fs1\home")
    assert "already added" in out and "2 share(s) pending" in out
    rc, out, _ = run(net, "-U", "u%p", "create", "--context", "nas-rollback", "--no-expose")
    assert rc == 0 and "Status:           committed" in out
    rc, out, _ = run(net, "-U", "u%p", "list", "--json", "--no-check")
    doc = json.loads(out)
    (s,) = doc["sets"]
    assert s["status"] == "committed" and len(s["copies"]) == 2
    assert s["attributes"] == ["Persistent", "No_Auto_Release", "No_Writers", "Read-only"]
    rc, out, _ = run(net, "-U", "u%p", "expose", s["set_id"])
    assert rc == 0 and "Snapshot share:  \\\\fs1\\data@{" in out
    rc, out, _ = run(net, "-U", "u%p", "recover", s["set_id"])
    assert rc == 0 and "already recovered" in out
    rc, out, err = run(net, "-U", "u%p", "list")
    assert rc == 0 and "Number of shadow copies listed: 2" in out and err == ""
    copy_id = s["copies"][0]["copy_id"]
    rc, out, _ = run(net, "-U", "u%p", "delete", copy_id)
    assert rc == 0 and f"deleted shadow copy {{{copy_id}}}" in out
    rc, out, _ = run(net, "-U", "u%p", "delete", "--all", "--json")
    assert [d["outcome"] for d in json.loads(out)["deleted"]] == ["deleted"]
    assert srv.clean


def test_writable_create_then_recover(net: FakeNetwork) -> None:
    rc, out, err = run(
        net,
        "-U",
        "u%p",
        "--json",
        "create",
        "--writable",
        "--context",
        "app-rollback",
        r"\\fs1\data",
    )
    (s,) = json.loads(out)["sets"]
    assert rc == 0 and s["status"] == "exposed" and s["writable"] and "recover" in err
    rc, out, _ = run(net, "-U", "u%p", "recover", s["set_id"])
    assert rc == 0 and "recovered (RecoveryComplete)" in out
    run(net, "-U", "u%p", "delete", s["client_set_id"])
    assert net.servers["fs1"].clean


def test_list_marks_stale_and_prunes(net: FakeNetwork) -> None:
    srv = net.servers["fs1"]
    run(net, "-U", "u%p", "create", r"\\fs1\data")
    srv.machine.sets.clear()
    rc, out, err = run(net, "-U", "u%p", "list")
    assert rc == 0 and "is no longer on fs1" in err and "marked stale" in err
    assert "Status:           stale" in out
    rc, out, err = run(net, "-U", "u%p", "list", "--prune", "--json")
    assert json.loads(out)["sets"] == [] and "removed from the client table" in err


def test_list_unreachable_server(net: FakeNetwork) -> None:
    run(net, "-U", "u%p", "create", r"\\fs1\data")
    net.down.add("fs1")
    rc, out, err = run(net, "-U", "u%p", "list")
    assert rc == 3 and "cannot check fs1" in err and "Number of shadow copies listed: 1" in out


def test_create_failure_reports_fsrvp_name(net: FakeNetwork) -> None:
    srv = net.servers["fs1"]
    srv.fail[Opnum.COMMIT_SHADOW_COPY_SET] = HResult.FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS
    rc, out, err = run(net, "-U", "u%p", "create", r"\\fs1\data")
    assert rc == 1
    assert "CommitShadowCopySet failed: FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS (0x80042316)" in err
    assert srv.clean
    rc, out, _ = run(net, "-U", "u%p", "list", "--no-check")
    assert "listed: 0" in out


def test_query(net: FakeNetwork) -> None:
    rc, out, _ = run(net, "-U", "u%p", "query", r"\\fs1\data")
    assert rc == 0 and r"\\fs1\data: supported (owner FS1)" in out
    rc, out, err = run(net, "-U", "u%p", "query", r"\\fs1\nope")
    assert rc == 1 and "E_INVALIDARG" in err and "no such share" in err


SCRIPT = r"""
# a DiskShadow-style script
set context backup
add \\fs1\data alias DATA
add \\fs1\home
create
echo created %VSS_SHADOW_SET% data=%DATA%
list shadows set %VSS_SHADOW_SET%
exec {python} -c "import os,sys; sys.exit(0 if os.environ['REMOTEVSS_SNAPSHOT_SHARES'].count('@{{') == 2 and os.environ['REMOTEVSS_DATA'] else 3)"
set context nas-rollback
add \\fs1\data
create
exit
"""


def test_script_mode_releases_auto_release_sets(net: FakeNetwork, tmp_path: Path) -> None:
    script = tmp_path / "s.dsh"
    script.write_text(SCRIPT.format(python=sys.executable))
    rc, out, err = run(net, "-U", "u%p", "-s", str(script))
    assert rc == 0, err
    assert "created " in out and "data=" in out
    assert "releasing auto-release set" in out
    srv = net.servers["fs1"]
    # the backup set was released at the end, the nas-rollback one is kept
    rc, out, _ = run(net, "-U", "u%p", "list", "--json", "--no-check")
    (kept,) = json.loads(out)["sets"]
    assert kept["context"] == "nas-rollback"
    script.write_text("delete shadows all\n")
    assert run(net, "-U", "u%p", "-s", str(script))[0] == 0
    assert srv.clean


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("frobnicate\n", 2, "s.dsh:1: unknown command 'frobnicate'"),
        ("set context weird\n", 2, "unknown context"),
        ("add\n", 2, "add [volume] \\\\host\\share"),
        ("add volume\n", 2, "add [volume] \\\\host\\share"),
        ("set context persistent writers\n", 2, "set context persistent [nowriters]"),
        ("begin restore\n", 2, "begin backup"),
        ("\n\ncreate\n", 2, "s.dsh:3: create: no shares added"),
        ("echo %NOPE%\n", 2, "unknown variable %NOPE%"),
        ("add \\\\fs1\\data\\x\n", 2, "inside a share"),
        ("list shadows\n", 2, "list shadows all"),
        ("exec false\n", 8, "exited with status 1"),
        ("exit 7\n", 7, ""),
        ("add \\\\fs1\\nosuch\ncreate\n", 1, "E_INVALIDARG"),
        ("delete shadows id {11111111-2222-3333-4444-555555555555}\n", 5, "no shadow copy"),
    ],
)
def test_script_errors(
    net: FakeNetwork, tmp_path: Path, text: str, code: int, message: str
) -> None:
    script = tmp_path / "s.dsh"
    script.write_text(text)
    rc, out, err = run(net, "-U", "u%p", "-s", str(script))
    assert rc == code, (out, err)
    assert message in err
    assert net.servers["fs1"].clean


def test_script_stops_at_first_error_and_still_releases(net: FakeNetwork, tmp_path: Path) -> None:
    script = tmp_path / "s.dsh"
    script.write_text("add \\\\fs1\\data\ncreate\nexec false\necho not reached\n")
    rc, out, err = run(net, "-U", "u%p", "-s", str(script))
    assert rc == 8 and "not reached" not in out and "releasing" in out
    assert net.servers["fs1"].clean


def test_script_and_command_conflict(tmp_path: Path) -> None:
    rc, _, err = run(None, "-U", "u%p", "-s", "x", "list")
    assert rc == 2 and "do not go together" in err
    rc, _, err = run(None, "-U", "u%p", "-s", str(tmp_path / "missing"))
    assert rc == 2 and "cannot read script" in err


def test_create_merges_pending_and_arguments(net: FakeNetwork) -> None:
    run(net, "-U", "u%p", "add", "--no-check", r"\\FS1\DATA", r"\\fs1\home")
    rc, out, err = run(net, "-U", "u%p", "--json", "create", r"\\fs1\data\\"[:-1])
    assert rc == 0, err
    (s,) = json.loads(out)["sets"]
    assert [c["original_share"] for c in s["copies"]] == [r"\\fs1\data", r"\\fs1\home"]
    rc, out, _ = run(net, "-U", "u%p", "create")
    assert rc == 2  # the pending list was used up
    run(net, "-U", "u%p", "delete", "--all")
    assert net.servers["fs1"].clean


def test_expose_of_a_recovered_set_on_a_spec_server_shows_the_recorded_mappings() -> None:
    """A spec server refuses GetShareMapping once a set is Recovered (BAD_STATE);
    ``expose`` of such a set shows what the client recorded instead of failing."""
    net = FakeNetwork()
    net.add(FakeServer({"fs1"}, {"data": "/v1"}, Mode.SPEC))
    rc, out, err = run(net, "-U", "u%p", "--json", "create", r"\\fs1\data")
    assert rc == 0, err
    (s,) = json.loads(out)["sets"]
    assert s["status"] == "recovered"
    rc, out, err = run(net, "-U", "u%p", "expose", s["set_id"])
    assert rc == 0, err
    assert s["copies"][0]["snapshot_share"] in out
    assert "no longer reports its mappings (FSRVP_E_BAD_STATE)" in err


def test_ctrl_c_while_closing_the_table_is_no_traceback(
    net: FakeNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C arriving as the command closed the client table escaped run()'s error
    boundary: a traceback and death by SIGINT after the work was done and recorded."""
    from remotevss.client.state import ClientState

    real = ClientState.close

    def interrupted(self: ClientState) -> None:
        real(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(ClientState, "close", interrupted)
    rc, out, err = run(net, "-U", "u%p", "--json", "create", r"\\fs1\data")
    assert rc == 0, err  # the set was made and recorded before the interrupt
    assert json.loads(out)["sets"][0]["status"] == "recovered"
    monkeypatch.setattr(ClientState, "close", real)
    rc, out, _ = run(net, "-U", "u%p", "--json", "list", "--no-check")
    assert rc == 0 and len(json.loads(out)["sets"]) == 1
