"""Config validation, UNC parsing and the journal's round trip."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from remotevss.agent.config import ConfigError, ShareConfig, load_config
from remotevss.agent.journal import Journal
from remotevss.fsrvp.machine import MappedShare, Mode, ShadowCopy, ShadowCopySet, Status
from remotevss.shares.table import BadShareName, LocalShare, ShareTable, parse_unc


def test_defaults_need_no_file() -> None:
    cfg = load_config(None)
    assert cfg.mode is Mode.SPEC and cfg.sequence_timeout is None and cfg.shares == ()
    assert cfg.socket_path == "/run/remotevss/agent.sock"
    assert (cfg.rpc_auth.helpers, cfg.rpc_auth.helper_idle) == (2, 30.0)


def test_file_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text(
        '[agent]\nmode = "samba"\nsequence_timeout = 5\n'
        '[shares]\ndata = "/srv/data"\nvms = { path = "/srv/vms", backend = "reflink" }\n'
    )
    cfg = load_config(f, sequence_timeout=0, shares=[ShareConfig("extra", "/srv/x")])
    assert cfg.mode is Mode.SAMBA and cfg.sequence_timeout == 0
    assert [(s.name, s.path, s.backend) for s in cfg.shares] == [
        ("data", "/srv/data", "auto"), ("vms", "/srv/vms", "reflink"), ("extra", "/srv/x", "auto")]


@pytest.mark.parametrize("text,needle", [
    ("[agent]\nsokcet = 1\n", "sokcet"),
    ("[nope]\n", "nope"),
    ('[agent]\nmode = "windows"\n', "mode"),
    ("[agent]\nsequence_timeout = -1\n", "sequence_timeout"),
    ('[agent]\nbackend = "lvm-thin"\n', "lvm-thin"),  # not a backend (yet)
    ('[shares]\n"a/b" = "/x"\n', "invalid share name"),
    ('[shares]\na = "relative"\n', "absolute"),
    ('[shares]\na = "/x"\nA = "/y"\n', "unique"),
    ('[shares]\na = { pth = "/x" }\n', "expected a path"),
    ("[agent\n", "a.toml"),
    ('[samba]\nconfig = "/etc/samba/smb.conf"\n', "config"),
    ("[rpc_auth]\nhelpers = 0\n", "helpers"),
    ("[rpc_auth]\nhelper_idle = -1\n", "helper_idle"),
    ('[rpc_auth]\nhelper_idle = "30"\n', "helper_idle"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "a.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert needle in str(exc.value)


@pytest.mark.parametrize("unc,share", [
    (r"\\fs1\data", "data"), (r"\\fs1\data" + "\\", "data"), (r"\\fs1.example.com\Data", "Data"),
    (r"\\192.0.2.7\d$", "d$"), (r"\\[fe80::1]\x", "x"), (r"\\fe80--1.ipv6-literal.net\x", "x"),
])
def test_parse_unc_takes_only_the_share(unc: str, share: str) -> None:
    assert parse_unc(unc) == share


@pytest.mark.parametrize("unc", [
    "", "data", r"\data", r"\\", r"\\host", r"\\host\\", r"\\\share", r"\\h\a\b", r"\\h\a\b" + "\\",
    r"\\h\a*b", "\\\\h\\" + "x" * 81, "\\\\h\\a\x00", "\\\\" + "h" * 2000 + "\\a", "//h/a",
])
def test_parse_unc_refuses(unc: str) -> None:
    with pytest.raises(BadShareName):
        parse_unc(unc)


def test_share_table_is_case_insensitive() -> None:
    t = ShareTable([LocalShare("Data", "/srv/data")])
    assert t.lookup("DATA") == LocalShare("Data", "/srv/data")
    assert t.lookup("other") is None
    assert [s.name for s in t] == ["Data"]


def _set(status: Status) -> ShadowCopySet:
    c = ShadowCopy(uuid.uuid4(), "btrfs:/v", 1234.5, [MappedShare("\\\\h\\d\\", "d", "d@{x}", True)],
                   "/v/.snapshots/s", True)
    return ShadowCopySet(uuid.uuid4(), status, 0x400019, [c])


def test_journal_round_trip_and_intents(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    a, b = _set(Status.EXPOSED), _set(Status.RECOVERED)
    with j.transaction() as txn:
        txn.save_sets([a, b])
        iid = txn.add_intent("create_snapshot", {"volume": "btrfs:/v", "path": "/v/.snapshots/t"})
    j.close()
    j = Journal(tmp_path / "j.sqlite3")  # reopened: everything came back
    assert {s.id: s for s in j.load_sets()} == {a.id: a, b.id: b}
    [intent] = j.pending_intents()
    assert (intent.id, intent.kind, intent.detail["path"]) == (iid, "create_snapshot", "/v/.snapshots/t")
    with j.transaction(durable=False) as txn:
        txn.clear_intent(iid)
        txn.delete_set(a.id)
    assert j.pending_intents() == [] and [s.id for s in j.load_sets()] == [b.id]


def test_journal_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    a = _set(Status.EXPOSED)
    with pytest.raises(RuntimeError), j.transaction() as txn:
        txn.save_set(a)
        raise RuntimeError("boom")
    assert j.load_sets() == []


def test_journal_files_are_the_owners_alone(tmp_path: Path) -> None:
    """Under umask 022 in a 0755 state directory (an older setup's) the journal and
    its WAL were 0644: every local user could read the shares, paths and sets."""
    import os
    import stat

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        j = Journal(state / "journal.db")
        j.close()
        (state / "journal.db").chmod(0o644)  # as the old code left it
        j = Journal(state / "journal.db")
        with j.transaction() as txn:
            txn.save_sets([_set(Status.EXPOSED)])
        files = sorted(state.iterdir())
        assert any(f.name.endswith("-wal") for f in files), files
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
        j.close()
    finally:
        os.umask(old)
