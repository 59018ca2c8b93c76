"""`remotevss setup samba` and `remotevss doctor` on an smb.conf that includes other files.

Debian- and TrueNAS-style servers keep shares (and some [global] lines) in a
file that smb.conf includes.  Samba's own parser (``testparm``) is the oracle:
after setup it must say what setup promised, and doctor must judge the values
testparm reports, not the ones smb.conf alone shows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from remotevss.setup.smbconf_text import SmbConfText
from tests.support.etc_view import loadparm_value
from tests.support.setup_root import debian_root, doctor_json, setup, tree

CLI = [sys.executable, "-m", "remotevss.cli"]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """Debian's smb.conf with a site file included in [global] (it turns the on-demand
    helpers back on) and the shares in a file included at the end."""
    root = debian_root(tmp_path)
    conf = root / "etc/samba/smb.conf"
    c = SmbConfText(conf.read_text())
    c.set("global", "include", "/etc/samba/site.conf")
    conf.write_text(c.text() + "\ninclude = /etc/samba/shares.conf\n")
    (root / "etc/samba/site.conf").write_text("# site policy\nrpc start on demand helpers = yes\n")
    (root / "etc/samba/shares.conf").write_text(
        "[data]\n   path = /srv/data\n   vfs objects = acl_xattr\n\n"
        "[projects]\n   path = /srv/projects\n")
    return root


@pytest.mark.root
def test_setup_edits_the_files_that_define_what_it_changes(target: Path) -> None:
    before = tree(target)
    assert loadparm_value(target, "global", "rpc start on demand helpers") == "Yes"
    out = setup(target, "--yes", "--share", "data")
    assert out.returncode == 0, out.stderr
    # Samba's parser sees what setup promised ...
    assert loadparm_value(target, "global", "rpc start on demand helpers") == "No"
    assert loadparm_value(target, "global", "registry shares") == "Yes"
    assert loadparm_value(target, "data", "vfs objects") == "acl_xattr shadow_copy2"
    assert loadparm_value(target, "data", "shadow:snapdir") == ".snapshots"
    assert loadparm_value(target, "projects", "vfs objects") == ""
    # ... because each line went where its section or value is defined
    main = (target / "etc/samba/smb.conf").read_text()
    assert "[data]" not in main, "no second [data] in smb.conf"
    assert "rpc start on demand helpers = no" in (target / "etc/samba/site.conf").read_text()
    assert "shadow_copy2" in (target / "etc/samba/shares.conf").read_text()
    assert "/etc/samba/shares.conf: change" in out.stdout, out.stdout
    assert "/etc/samba/site.conf: change" in out.stdout
    again = setup(target, "--yes", "--share", "data")
    assert "nothing to change" in again.stdout, again.stdout
    undone = setup(target, "--undo")
    assert undone.returncode == 0, undone.stderr
    assert "restored /etc/samba/shares.conf" in undone.stdout
    assert tree(target) == before, "--undo restores every file, included ones too"


@pytest.mark.root
def test_a_global_line_goes_before_the_include_that_ends_global(target: Path) -> None:
    """A parameter after ``include = FILE`` belongs to FILE's last section: a line
    appended at the end of [global] in smb.conf would land in [projects]."""
    (target / "etc/samba/site.conf").unlink()
    conf = target / "etc/samba/smb.conf"
    text = conf.read_text().replace("include = /etc/samba/site.conf", "").replace(
        "\ninclude = /etc/samba/shares.conf\n", "")
    # shares included in the middle of [global], as some generated configs do
    conf.write_text(text.replace("[global]", "[global]\n   include = /etc/samba/shares.conf", 1))
    assert setup(target, "--yes").returncode == 0
    assert loadparm_value(target, "global", "registry shares") == "Yes"
    assert loadparm_value(target, "global", "rpc start on demand helpers") == "No"


@pytest.mark.parametrize("kind", ["cycle", "self"])
def test_setup_refuses_an_include_cycle_and_changes_nothing(target: Path, kind: str) -> None:
    """Samba refuses the whole configuration (include depth 100); so does setup."""
    back = "/etc/samba/smb.conf" if kind == "cycle" else "/etc/samba/shares.conf"
    with (target / "etc/samba/shares.conf").open("a") as f:
        f.write(f"include = {back}\n")
    before = tree(target)
    out = setup(target, "--yes")
    assert out.returncode == 2, out.stdout
    assert "include cycle" in out.stderr and "/etc/samba/shares.conf" in out.stderr, out.stderr
    assert tree(target) == before


def test_setup_names_includes_it_cannot_follow(target: Path) -> None:
    conf = target / "etc/samba/smb.conf"
    conf.write_text(conf.read_text() + "include = /etc/samba/gone.conf\n"
                    "include = /etc/samba/%m.conf\n")
    out = setup(target)
    assert out.returncode == 0, out.stderr
    assert "/etc/samba/gone.conf: no such file (Samba skips it too)" in out.stdout
    assert "include = /etc/samba/%m.conf: %-substitution" in out.stdout
    refused = setup(target, "--share", "perclient")
    assert refused.returncode == 2
    assert "no such share" in refused.stderr and "%m.conf" in refused.stderr


def _tparm(conf: Path, section: str, parameter: str) -> str:
    p = subprocess.run(["testparm", "-s", "--section-name", section, "--parameter-name",
                        parameter, str(conf)], capture_output=True, text=True, timeout=60,
                       check=True, cwd="/")
    return p.stdout.strip()


def test_doctor_judges_the_values_samba_reads_from_included_files(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    conf = etc / "smb.conf"
    dirs = ""
    for d in ("state directory", "lock directory", "cache directory", "pid directory",
              "private dir"):
        (tmp_path / d.split()[0]).mkdir()
        dirs += f"   {d} = {tmp_path}/{d.split()[0]}\n"
    conf.write_text(f"[global]\n{dirs}   rpc start on demand helpers = no\n"
                    f"   registry shares = yes\n   include = {etc}/site.conf\n"
                    f"include = {etc}/shares.conf\ninclude = {etc}/gone.conf\n")
    (etc / "site.conf").write_text("[global]\nrpc start on demand helpers = yes\n")
    (etc / "shares.conf").write_text(f"[data]\n   path = {data}\n")
    assert _tparm(conf, "global", "rpc start on demand helpers") == "Yes"
    rc, checks = doctor_json(tmp_path, conf)
    assert rc == 1
    assert checks["rpc start on demand helpers"]["result"] == "FAIL", checks
    assert checks["share [data]"]["detail"].startswith(str(data)), checks
    inc = checks["smb.conf includes"]
    assert inc["result"] == "warn" and f"{etc}/gone.conf: no such file" in inc["detail"], inc
    assert f"{etc}/shares.conf" in inc["detail"]

    (etc / "shares.conf").write_text(f"include = {conf}\n")
    rc, checks = doctor_json(tmp_path, conf)
    assert rc == 2
    assert checks["smb.conf"]["result"] == "FAIL"
    assert "include cycle" in checks["smb.conf"]["detail"], checks
    p = subprocess.run(["testparm", "-s", str(conf)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert "Maximum include depth" in p.stderr + p.stdout  # Samba refuses it too


def test_setup_refuses_to_edit_a_file_read_twice(target: Path) -> None:
    """A file included twice is read twice: a line added there would count twice (in
    two sections, maybe), so setup names it instead of guessing."""
    conf = target / "etc/samba/smb.conf"
    conf.write_text(conf.read_text() + "include = /etc/samba/shares.conf\n")
    before = tree(target)
    out = setup(target, "--yes", "--share", "data")
    assert out.returncode == 2, out.stdout
    assert "/etc/samba/shares.conf is included more than once" in out.stderr, out.stderr
    assert tree(target) == before
