"""`remotevss doctor` on smb.conf settings that make previous versions miss the agent's
snapshots: each is named, with the setting that fixes it."""

from __future__ import annotations

from pathlib import Path

from tests.support.setup_root import doctor_json


def _smb_conf(tmp_path: Path, shares: str) -> Path:
    lines = ["[global]"]
    for d in ("state directory", "lock directory", "cache directory", "pid directory",
              "private dir"):
        (tmp_path / d.split()[0]).mkdir(exist_ok=True)
        lines.append(f"   {d} = {tmp_path}/{d.split()[0]}")
    lines += ["   rpc start on demand helpers = no", "   registry shares = yes"]
    conf = tmp_path / "smb.conf"
    conf.write_text("\n".join(lines) + "\n" + shares)
    return conf


def test_doctor_warns_when_previous_versions_would_not_show_the_agents_snapshots(
    tmp_path: Path,
) -> None:
    """A share still set up for ZFS's own snapshots (TrueNAS style), and an agent that
    names snapshots so shadow_copy2 cannot open them: both look fine until a user
    opens Previous Versions."""
    (tmp_path / "data").mkdir()
    zfs_style = (f"[data]\n   path = {tmp_path}/data\n   vfs objects = shadow_copy2\n"
                 "   shadow:snapdir = .zfs/snapshot\n   shadow:format = auto-%Y%m%d\n")
    conf = _smb_conf(tmp_path, zfs_style)
    _rc, checks = doctor_json(tmp_path, conf)
    pv = checks["previous versions"]
    assert pv["result"] == "warn", checks
    assert "[data] shadow:snapdir = .zfs/snapshot" in pv["detail"]
    assert "[data] shadow:format = auto-%Y%m%d" in pv["detail"]
    assert 'snapshot_names = "unique"' in pv["detail"] and "gmt" in pv["fix"]

    conf = _smb_conf(tmp_path, zfs_style.replace(".zfs/snapshot", ".snapshots")
                     .replace("   shadow:format = auto-%Y%m%d\n", ""))
    _rc, checks = doctor_json(tmp_path, conf, agent='snapshot_names = "gmt"')
    assert checks["previous versions"]["result"] == "ok", checks


def test_doctor_leaves_out_shares_that_are_switched_off(tmp_path: Path) -> None:
    """``available = no``: smbd refuses the share and the agent does not serve it, so
    its missing directory (a retired disk) is no failure of the agent's setup."""
    (tmp_path / "data").mkdir()
    conf = _smb_conf(tmp_path, f"[data]\n   path = {tmp_path}/data\n"
                               f"[retired]\n   path = {tmp_path}/gone\n   available = no\n")
    _rc, checks = doctor_json(tmp_path, conf)
    assert "share [data]" in checks, checks
    assert "share [retired]" not in checks, checks["share [retired]"]


def test_doctor_warns_when_there_is_no_share_to_snapshot(tmp_path: Path) -> None:
    """Debian's stock share sections only: [homes], [printers] and [print$], none of which
    the agent snapshots; every other check may pass while every request is 'not
    supported'.  One share of its own ends the warning."""
    stock = ("[homes]\n   browseable = no\n[printers]\n   path = /var/tmp\n   printable = yes\n"
             "[print$]\n   path = /var/lib/samba/printers\n")
    conf = _smb_conf(tmp_path, stock)
    _rc, checks = doctor_json(tmp_path, conf, shares="samba")
    assert checks["shares"]["result"] == "warn", checks
    assert "[homes]" in checks["shares"]["detail"] and "add a share" in checks["shares"]["fix"]
    (tmp_path / "data").mkdir()
    conf = _smb_conf(tmp_path, stock + f"[data]\n   path = {tmp_path}/data\n")
    _rc, checks = doctor_json(tmp_path, conf, shares="samba")
    assert "shares" not in checks and "share [data]" in checks, checks


def test_doctor_reads_an_smb_conf_with_a_latin1_comment(tmp_path: Path) -> None:
    """Samba reads it; doctor used to end in a UnicodeDecodeError traceback."""
    (tmp_path / "data").mkdir()
    conf = _smb_conf(tmp_path, f"[data]\n   path = {tmp_path}/data\n")
    conf.write_bytes(conf.read_bytes() + "# Freigabe für die Buchhaltung\n".encode("latin-1"))
    rc, checks = doctor_json(tmp_path, conf)
    assert rc == 1 and "share [data]" in checks, checks  # 1: no agent runs here


def test_doctor_warns_on_a_samba_ad_dc(tmp_path: Path) -> None:
    conf = _smb_conf(tmp_path, "")
    conf.write_text(conf.read_text().replace("[global]\n", "[global]\n   server role = dc\n"))
    _rc, checks = doctor_json(tmp_path, conf)
    assert checks["server role"]["result"] == "warn", checks
    assert "setup samba refuses it" in checks["server role"]["detail"]
