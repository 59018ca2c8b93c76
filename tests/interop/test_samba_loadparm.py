"""The agent's view of smb.conf (samba/conf.py ``SambaConf``), read by Samba's own
loadparm in a short-lived child (samba/loadparm.py): includes and ``copy =``
as Samba resolves them, re-read only when a watched file changes, a config
Samba cannot load refused with Samba's words while the last good snapshot
stays, and the re-read never done on an event-loop thread."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from remotevss.samba.conf import SambaConf, SambaConfigError
from remotevss.samba.shares import SambaShareTable

pytestmark = pytest.mark.skipif(
    not __import__("importlib.util").util.find_spec("samba"), reason="python3-samba missing"
)


def _write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def conf_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    main = tmp_path / "smb.conf"
    inc = tmp_path / "shares.conf"
    _write(main, f"[global]\nnetbios name = lpt\nstate directory = {tmp_path}/state\n"
                 f"include = {tmp_path}/shares.conf\n")  # fmt: skip
    _write(inc, f"[data]\npath = {data}\n[clone]\ncopy = data\ncomment = a copy\n")
    return main, inc, data


def test_snapshot_has_what_samba_resolves(conf_files: tuple[Path, Path, Path]) -> None:
    main, inc, data = conf_files
    conf = SambaConf(main)
    assert conf.netbios_name == "LPT" and conf.state_dir.endswith("/state")
    assert set(conf.file_services()) == {"data", "clone"}
    assert conf.get("path", "clone") == str(data)  # copy = data, resolved by loadparm
    assert conf.get("path", "nosuch") is None
    assert str(inc) in set(conf.watched_files())
    d = conf.file_share("CLONE")
    assert d is not None and d.source == str(inc) and d.get("comment") == "a copy"
    assert not conf.registry_shares
    with pytest.raises(SambaConfigError, match="not in the snapshot"):
        conf.get("vfs objects")  # only what the agent reads is in it: no silent None
    with pytest.raises(SambaConfigError, match="does not exist"):
        SambaConf(main.parent / "missing.conf")


def test_changes_are_seen_and_a_broken_config_keeps_the_last_good_one(
    conf_files: tuple[Path, Path, Path],
) -> None:
    main, inc, data = conf_files
    conf = SambaConf(main)
    table = SambaShareTable(conf)
    assert conf.refresh() is False and conf.loads == 1  # nothing changed: no child
    text = inc.read_text()
    _write(inc, text + f"[later]\npath = {data}\n")  # a change in an included file
    share = table.lookup("LATER")
    assert share is not None and share.path == str(data) and conf.loads == 2

    _write(main, main.read_text() + "[broken\n")  # loadparm refuses an unclosed section
    assert conf.refresh() is False
    assert "Unable to load file" in conf.last_error and str(main) in conf.last_error
    assert table.lookup("later") is not None  # the last good snapshot stays
    loads = conf.loads
    for _ in range(3):
        assert conf.refresh() is False
    assert conf.loads == loads  # not retried until a watched file changes again

    _write(main, main.read_text().replace("[broken\n", ""))
    _write(inc, text)
    assert table.lookup("later") is None and conf.last_error == ""


def test_the_event_loop_thread_never_waits_for_the_child(
    conf_files: tuple[Path, Path, Path],
) -> None:
    """On an event-loop thread a lookup answers from the snapshot it has and has the
    new one read in a thread; ``fresh()`` (what the agent awaits before a share is
    resolved) re-reads off the loop, so the call after it sees the change."""
    main, inc, data = conf_files
    conf = SambaConf(main)
    table = SambaShareTable(conf)
    costs = []
    for i in range(3):
        _write(inc, inc.read_text() + f"[s{i}]\npath = {data}\n")
        t0 = time.perf_counter()
        conf.refresh()
        costs.append(time.perf_counter() - t0)
    print(f"refresh (child run): median {statistics.median(costs) * 1e3:.0f} ms")

    async def on_loop() -> tuple[bool, float, bool, bool]:
        _write(inc, inc.read_text() + f"[onloop]\npath = {data}\n")
        t0 = time.perf_counter()
        first = table.lookup("onloop") is not None  # stale: answered at once
        took = time.perf_counter() - t0
        await table.fresh()
        after = table.lookup("onloop") is not None
        _write(inc, inc.read_text() + f"[second]\npath = {data}\n")
        await table.fresh()
        return first, took, after, table.lookup("second") is not None

    first, took, after, second = asyncio.run(on_loop())
    assert not first and took < statistics.median(costs) / 2, (took, costs)
    assert after and second


def test_a_relative_include_is_the_file_samba_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loadparm opens a relative include from the working directory (smbd's and the
    agent's under systemd: /), not from smb.conf's: the share definitions the agent
    clones and the files it watches are that file's."""
    etc, cwd = tmp_path / "etc", tmp_path / "cwd"
    for d in (etc / "rel", cwd / "rel"):
        d.mkdir(parents=True)
    main = etc / "smb.conf"
    _write(main, f"[global]\nstate directory = {tmp_path}/state\ninclude = rel/shares.conf\n")
    _write(cwd / "rel/shares.conf", f"[data]\npath = {tmp_path}\n")
    _write(etc / "rel/shares.conf", f"[other]\npath = {tmp_path}\n")  # not what Samba reads
    monkeypatch.chdir(cwd)
    conf = SambaConf(main)
    assert set(conf.file_services()) == {"data"}
    d = conf.file_share("data")
    assert d is not None and d.source == str(cwd / "rel/shares.conf"), d
    assert str(cwd / "rel/shares.conf") in set(conf.watched_files())


def test_a_share_defined_again_in_an_included_file_is_cloned_whole(tmp_path: Path) -> None:
    """smbd merges [data] from smb.conf and [data] again in an included file; the
    definition a snapshot share clones must have both (here the included file's
    ``valid users``: without it the snapshot would be open to everyone)."""
    main, inc = tmp_path / "smb.conf", tmp_path / "more.conf"
    _write(main, f"[global]\nstate directory = {tmp_path}/state\n[data]\npath = {tmp_path}\n"
                 f"read only = no\ninclude = {inc}\n")
    _write(inc, "[data]\nvalid users = root\nread only = yes\n")
    d = SambaConf(main).file_share("data")
    assert d is not None and d.source == str(main)
    assert d.get("path") == str(tmp_path) and d.get("valid users") == "root"
    assert d.get("read only") == "yes"  # the later value, as smbd has it


def test_an_included_file_of_global_settings_without_a_header(tmp_path: Path) -> None:
    """``include = /etc/samba/site.conf`` in [global], the site file holding only
    ``registry shares = yes`` (no [global] line: loadparm reads it as [global]).  The
    agent took those lines for no section, saw registry shares off and refused to
    start with registry exposure, while smbd had them on."""
    main, site = tmp_path / "smb.conf", tmp_path / "site.conf"
    _write(main, f"[global]\nstate directory = {tmp_path}/state\ninclude = {site}\n"
                 f"[data]\npath = {tmp_path}\ninclude = {tmp_path}/data-extra.conf\n")
    _write(site, "registry shares = yes\n")
    _write(tmp_path / "data-extra.conf", "valid users = root\n")  # included from [data]
    conf = SambaConf(main)
    assert conf.registry_shares
    d = conf.file_share("data")
    assert d is not None and d.get("valid users") == "root"
