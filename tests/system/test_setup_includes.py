"""`remotevss setup samba` and `remotevss doctor` on an smb.conf that includes other files.

Debian- and TrueNAS-style servers keep shares (and some [global] lines) in a
file that smb.conf includes.  Samba's own parser (``testparm``) is the oracle:
after setup it must say what setup promised, and doctor must judge the values
testparm reports, not the ones smb.conf alone shows.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from remotevss.setup.smbconf_files import EditError, SmbConfFiles
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


_LOADPARM = """
import json, sys
from samba.samba3 import param
lp = param.get_context()
lp.set("log level", "0")
lp.load(sys.argv[1])
print(json.dumps({"global": lp.get("x:tag"),
                  **{str(s): lp.get("x:tag", str(s)) for s in lp.services()}}))
"""


def _samba_reads(conf: Path) -> dict[str, str | None]:
    """Samba's loadparm (a child: it is one global per process): x:tag per section."""
    p = subprocess.run([sys.executable, "-c", _LOADPARM, str(conf)], capture_output=True,
                       text=True, timeout=60, check=True, cwd="/")
    return dict(json.loads(p.stdout))


def _ours(conf: SmbConfFiles) -> dict[str, str | None]:
    """The same with our reader: a parametric option falls back to [global]'s."""
    glob = conf.get("global", "x:tag")
    return {"global": glob, **{s: conf.get(s, "x:tag") or glob for s in conf.share_names()}}


@pytest.mark.parametrize("seed", range(24))
def test_includes_read_and_edited_as_samba_reads_them(tmp_path: Path, seed: int) -> None:
    """Random include trees (sections and includes anywhere, a file included twice
    now and then): every section's effective value is Samba's, and after an edit the
    edited section has the new value and no other section changed (Samba's loadparm
    is the oracle)."""
    pytest.importorskip("samba")
    rnd = random.Random(seed)
    files = [tmp_path / f"f{i}.conf" for i in range(4)]
    for i, f in enumerate(files):
        lines = []
        for n in range(rnd.randint(2, 7)):
            pick = rnd.random()
            if pick < 0.3:
                lines.append(f"[s{rnd.randint(0, 4)}]")
            elif pick < 0.45 and i < len(files) - 1:
                lines.append(f"include = {rnd.choice(files[i + 1:])}")
            else:
                lines.append(f"   x:tag = {f.name}:{n}")
        f.write_text("\n".join(lines) + "\n")

    def read() -> SmbConfFiles:
        return SmbConfFiles(str(files[0]), lambda p: Path(p).read_text()
                            if Path(p).exists() else None)

    conf = read()
    assert _ours(conf) == _samba_reads(files[0])
    for section in ["global", *conf.share_names()]:
        before = _samba_reads(files[0])
        conf = read()
        try:
            conf.set(section, "x:tag", f"set-{section}")
        except EditError:
            continue  # a file read twice: refused, tested above
        for p in conf.changed():
            Path(p).write_text(conf.text(p))
        after = _samba_reads(files[0])
        assert after[section] == f"set-{section}", (section, after)
        changed = {s for s in after if after[s] != before[s]}
        if section == "global":  # shares without their own value follow [global]'s
            changed -= {s for s in after if read().get(s, "x:tag") is None}
        assert changed <= {section}, (section, before, after)
