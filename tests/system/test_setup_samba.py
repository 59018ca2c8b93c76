"""`remotevss setup samba --root DIR` on a copy of this machine's Samba files.

The full path (daemons started from the written units, a sealed FSRVP
sequence) is tests/interop/test_admin_setup.py, which runs in a fresh Debian
root; here the command's own promises are checked where it can run anywhere:
it shows before it changes, it is idempotent, --undo restores every file byte
for byte, and it picks the shares that should show previous versions.
"""

from __future__ import annotations

import json
import socketserver
import subprocess
import threading
from pathlib import Path

import pytest

from remotevss.agent.config import load_config
from remotevss.setup.smbconf_text import SmbConfText
from tests.conftest import LoopFs
from tests.support.setup_root import debian_root, setup, tree


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return debian_root(tmp_path)


def test_shows_applies_once_and_undoes(target: Path) -> None:
    before = tree(target)
    shown = setup(target)
    assert shown.returncode == 0, shown.stderr
    assert "+   rpc start on demand helpers = no" in shown.stdout
    assert tree(target) == before, "without --yes nothing changes"
    applied = setup(target, "--yes")
    assert applied.returncode == 0, applied.stderr
    conf = SmbConfText((target / "etc/samba/smb.conf").read_text())
    assert conf.get("global", "rpc start on demand helpers") == "no"
    assert conf.get("global", "registry shares") == "yes"
    unit = (target / "etc/systemd/system/samba-dcerpcd.service").read_text()
    assert " -s /etc/samba/smb.conf " in unit and "rpcd_fsrvp" not in unit.split("ExecStart")[1]
    assert "rpcd_classic" in unit
    agent = (target / "etc/systemd/system/remotevss-agent.service").read_text()
    assert "winbind.service" in agent and "Before=smbd.service" in agent
    after_line = next(line for line in agent.splitlines() if line.startswith("After="))
    assert {"winbind.service", "samba-dcerpcd.service"} <= set(after_line[6:].split())
    assert "--config /etc/remotevss/agent.toml" in agent
    wants = target / "etc/systemd/system/multi-user.target.wants"
    assert {p.name for p in wants.iterdir()} == {
        "winbind.service", "samba-dcerpcd.service", "remotevss-agent.service"}
    after = tree(target)
    again = setup(target, "--yes")
    assert "nothing to change" in again.stdout and tree(target) == after
    undone = setup(target, "--undo")
    assert undone.returncode == 0, undone.stderr
    assert tree(target) == before, "--undo restores every file as it was"


def test_an_existing_agent_config_gets_the_missing_keys(target: Path) -> None:
    """Kept as it was, an agent.toml without [samba] config_file left an agent serving
    no pipe, and doctor's fix (setup --yes) found nothing to change: a loop."""
    cfg = target / "etc/remotevss/agent.toml"
    cfg.parent.mkdir(parents=True)
    mine = "# the admin's\n[gc]\nmax_age = 172800  # two days\n"
    cfg.write_text(mine)
    shown = setup(target)
    assert '+config_file = "/etc/samba/smb.conf"' in shown.stdout, shown.stdout
    out = setup(target, "--yes")
    assert out.returncode == 0, out.stderr
    text = cfg.read_text()
    assert text.startswith(mine), "the admin's lines and comments are kept"
    config = load_config(cfg)
    assert config.samba.config_file == "/etc/samba/smb.conf"
    assert config.snapshot_names == "gmt" and config.gc.max_age == 172800
    assert "nothing to change" in setup(target, "--yes").stdout
    assert setup(target, "--undo").returncode == 0 and cfg.read_text() == mine


def test_an_agent_config_value_of_the_admin_is_kept(target: Path) -> None:
    cfg = target / "etc/remotevss/agent.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[agent]\nsnapshot_names = "unique"\n\n[samba]\n# ours\nshares = "samba"\n')
    out = setup(target, "--yes")
    assert out.returncode == 0, out.stderr
    assert "snapshot_names = 'unique' kept" in out.stdout
    config = load_config(cfg)
    assert config.snapshot_names == "unique"
    assert config.samba.config_file == "/etc/samba/smb.conf"


@pytest.mark.root
def test_previous_versions_go_to_shares_on_snapshot_filesystems(target: Path,
                                                                loopfs: LoopFs) -> None:
    btrfs = loopfs("btrfs")
    plain = loopfs("tmpfs")
    conf = target / "etc/samba/smb.conf"
    # paths as the target system sees them: below --root
    for fs in (btrfs, plain):
        (target / fs.relative_to("/")).mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(btrfs), str(target / btrfs.relative_to("/"))],
                   check=True)
    try:
        conf.write_text(conf.read_text() + f"\n[fast]\n   path = {btrfs}\n   vfs objects = acl_xattr\n"
                        f"\n[slow]\n   path = {plain}\n")
        out = setup(target, "--yes")
        assert out.returncode == 0, out.stderr
        c = SmbConfText(conf.read_text())
        assert c.get("fast", "vfs objects") == "acl_xattr shadow_copy2"
        assert c.get("fast", "shadow:snapdir") == ".snapshots"
        assert c.get("slow", "vfs objects") is None
        assert "[slow]" in out.stdout and "--share" in out.stdout  # said why, and how
        named = setup(target, "--yes", "--share", "slow")
        assert named.returncode == 0
        assert SmbConfText(conf.read_text()).get("slow", "vfs objects") == "shadow_copy2"
        bad = setup(target, "--share", "nosuch")
        assert bad.returncode == 2 and "no such share" in bad.stderr
        # registry shares are on now: the admin is told where such a share lives
        assert "'net conf setparm'" in bad.stderr, bad.stderr
    finally:
        subprocess.run(["umount", str(target / btrfs.relative_to("/"))], check=False)


def test_smbconf_edits_keep_the_file() -> None:
    text = "# top\n[global]\n   workgroup = W  \n; note\n[data]\n\tpath = /srv/d\n\n[x]\n"
    c = SmbConfText(text)
    assert not c.set("global", "Work Group", "W")  # same value, Samba's key spelling rules
    assert c.set("data", "vfs objects", "shadow_copy2")
    assert c.set("global", "registry shares", "yes")
    assert c.text() == ("# top\n[global]\n   workgroup = W  \n   registry shares = yes\n; note\n"
                        "[data]\n\tpath = /srv/d\n   vfs objects = shadow_copy2\n\n[x]\n")
    assert c.share_names() == ["data", "x"]


@pytest.mark.parametrize("global_vfs", ["acl_xattr", "btrfs, acl_xattr"])
def test_a_share_keeps_the_global_vfs_modules(target: Path, global_vfs: str) -> None:
    """A share's own ``vfs objects`` replaces [global]'s: written alone, shadow_copy2
    would silently drop acl_xattr (NT ACLs) or btrfs on exactly the snapshotted share."""
    conf = target / "etc/samba/smb.conf"
    c = SmbConfText(conf.read_text())
    c.set("global", "vfs objects", global_vfs)
    conf.write_text(c.text() + "\n[data]\n   path = /srv/data\n")
    out = setup(target, "--yes", "--share", "data")
    assert out.returncode == 0, out.stderr
    modules = global_vfs.replace(",", "")
    assert SmbConfText(conf.read_text()).get("data", "vfs objects") == f"{modules} shadow_copy2"
    assert f"[data] vfs objects = {modules} shadow_copy2" in out.stdout  # the full line shown
    assert "nothing to change" in setup(target, "--yes", "--share", "data").stdout


class _FakeAgent(socketserver.StreamRequestHandler):
    """The agent's admin socket as `status` answers it: one set, exposed."""

    def handle(self) -> None:
        self.rfile.readline()
        status = {"sets": [{"id": "5e7", "status": "Exposed"}],
                  "exposed_shares": ["data@{5e7}"]}
        self.wfile.write(json.dumps({"ok": True, "result": status}).encode() + b"\n")


def test_undo_refuses_while_the_agent_holds_sets(target: Path) -> None:
    """Undo takes away the pipe, registry shares and unit: a set still held would be left
    with nothing to release it, and the advice must be what to stop, not what to start."""
    cfg = target / "etc/remotevss/agent.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[agent]\nadmin_socket = "/a.sock"\n')  # below --root, like every path
    assert setup(target, "--yes").returncode == 0
    applied = tree(target)
    with socketserver.UnixStreamServer(str(target / "a.sock"), _FakeAgent) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            refused = setup(target, "--undo")
            assert refused.returncode == 2, refused.stdout
            assert "5e7 (Exposed)" in refused.stderr and "--force" in refused.stderr
            assert tree(target) == applied, "refused: nothing changed"
            forced = setup(target, "--undo", "--force")
        finally:
            server.shutdown()
    assert forced.returncode == 0, forced.stderr
    assert "5e7" in forced.stderr
    assert "stop order: remotevss-agent" in forced.stdout
    assert "start order" not in forced.stdout


def test_undo_says_removed_and_leaves_no_empty_directories(target: Path) -> None:
    before = {p.relative_to(target) for p in target.rglob("*") if "usr/libexec" not in str(p)}
    assert setup(target, "--yes").returncode == 0
    undone = setup(target, "--undo")
    assert undone.returncode == 0, undone.stderr
    assert "removed /etc/remotevss/agent.toml" in undone.stdout  # it did not exist before
    assert "restored /etc/samba/smb.conf" in undone.stdout
    after = {p.relative_to(target) for p in target.rglob("*") if "usr/libexec" not in str(p)}
    assert after == before, "the directories setup made (etc/remotevss, setup-undo) are gone"


def test_the_state_directory_setup_makes_is_private(target: Path) -> None:
    """Setup makes /var/lib/remotevss (for its undo record) before the agent ever
    runs: it must get the agent's mode, 0700, not the umask's 0755, or an agent
    started by hand (README) keeps its journal in a directory every user reads."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert setup(target, "--yes").returncode == 0
    finally:
        os.umask(old)
    for d in ("var/lib/remotevss", "var/lib/remotevss/setup-undo"):
        assert stat.S_IMODE((target / d).stat().st_mode) == 0o700, d


def test_undo_refuses_to_lose_edits_made_after_setup(target: Path) -> None:
    """--undo puts back smb.conf from before setup: a share added since would go with it."""
    conf = target / "etc/samba/smb.conf"
    before = conf.read_text()
    assert setup(target, "--yes").returncode == 0
    conf.write_text(conf.read_text() + "\n[projects]\n   path = /srv/projects\n")
    edited = conf.read_text()
    refused = setup(target, "--undo")
    assert refused.returncode == 2, refused.stdout
    assert "+[projects]" in refused.stderr and "--force" in refused.stderr
    assert conf.read_text() == edited, "refused: nothing changed"
    forced = setup(target, "--undo", "--force")
    assert forced.returncode == 0 and "+[projects]" in forced.stderr, forced.stderr
    assert conf.read_text() == before


def test_a_share_set_up_for_other_snapshots_is_named(target: Path) -> None:
    """shadow:snapdir pointing elsewhere (ZFS's own .zfs/snapshot) is the admin's and
    kept, but previous versions will not list the agent's snapshots: setup says so."""
    conf = target / "etc/samba/smb.conf"
    conf.write_text(conf.read_text() + "\n[data]\n   path = /srv/data\n"
                    "   vfs objects = shadow_copy2\n   shadow:snapdir = .zfs/snapshot\n")
    out = setup(target, "--share", "data")
    assert out.returncode == 0, out.stderr
    assert "[data] shadow:snapdir = .zfs/snapshot kept" in out.stdout, out.stdout


@pytest.mark.parametrize("link", ["smb.conf.site", "/etc/samba/smb.conf.site"])
def test_a_linked_smb_conf_stays_a_link(target: Path, link: str) -> None:
    """smb.conf as a link to the file configuration management writes: setup edits the
    file and keeps the link (replacing the link by a copy would cut smb.conf off from
    it for good), and --undo restores the file, link still in place."""
    conf = target / "etc/samba/smb.conf"
    site = target / "etc/samba/smb.conf.site"
    conf.rename(site)
    conf.symlink_to(link)
    before = site.read_text()
    out = setup(target, "--yes")
    assert out.returncode == 0, out.stderr
    assert conf.is_symlink() and str(conf.readlink()) == link
    assert "rpc start on demand helpers = no" in site.read_text()
    undone = setup(target, "--undo")
    assert undone.returncode == 0, undone.stderr
    assert conf.is_symlink() and site.read_text() == before


def test_a_crlf_smb_conf_keeps_its_line_ends(target: Path) -> None:
    """An smb.conf last saved on Windows (CRLF; Samba reads it fine): the lines setup
    adds end the same way, and --undo gives back the same bytes."""
    conf = target / "etc/samba/smb.conf"
    conf.write_bytes(conf.read_bytes().replace(b"\n", b"\r\n"))
    before = conf.read_bytes()
    assert setup(target, "--yes").returncode == 0
    after = conf.read_bytes()
    assert b"rpc start on demand helpers = no\r\n" in after
    assert after.count(b"\n") == after.count(b"\r\n"), "every line ends in CRLF"
    assert setup(target, "--undo").returncode == 0
    assert conf.read_bytes() == before


def test_a_latin1_comment_is_kept_byte_for_byte(target: Path) -> None:
    """An old server's smb.conf with a Latin-1 comment (Samba reads it fine): setup
    used to stop with a UnicodeDecodeError traceback.  Now the bytes stay as they
    are, through setup and --undo, and the plan prints."""
    conf = target / "etc/samba/smb.conf"
    comment = "# Freigabe für die Buchhaltung\n".encode("latin-1")
    conf.write_bytes(conf.read_bytes() + b"\n[data]\n   path = /srv/data\n" + comment)
    before = conf.read_bytes()
    out = setup(target, "--yes", "--share", "data")
    assert out.returncode == 0, out.stderr
    assert "f\ufffdr die Buchhaltung" in out.stdout  # shown in the plan's diff context
    assert comment in conf.read_bytes()
    assert setup(target, "--undo").returncode == 0
    assert conf.read_bytes() == before


@pytest.mark.parametrize("role", ["active directory domain controller", "DC"])
def test_setup_refuses_a_samba_ad_dc(target: Path, role: str) -> None:
    """On an AD DC, samba-ad-dc.service runs smbd, winbindd and the RPC server itself:
    enabling Debian's winbind.service and a samba-dcerpcd beside them (and restarting
    a masked smbd.service) would break the domain controller."""
    conf = target / "etc/samba/smb.conf"
    c = SmbConfText(conf.read_text())
    c.set("global", "server role", role)
    conf.write_text(c.text())
    before = tree(target)
    out = setup(target, "--yes")
    assert out.returncode == 2, out.stdout
    assert "samba-ad-dc.service" in out.stderr and "nothing was changed" in out.stderr
    assert tree(target) == before
