"""The admin's path: the machine's own Samba, set up by `remotevss setup samba`.

What a Samba admin does on a Debian server, end to end, with nothing private:
Debian's samba (installed by bootstrap, its stock /etc/samba/smb.conf including
/etc/samba/shares.conf with a share on a loop btrfs), `remotevss setup samba --yes`, then the daemons started
with exactly the command lines of the units (Debian's winbind.service and
smbd.service, the samba-dcerpcd.service and remotevss-agent.service the
command wrote; systemd itself does not run here, so the test does what their
RuntimeDirectory/StateDirectory lines ask).  Then: `remotevss doctor` passes,
impacket binds NTLM at privacy and runs the whole MS-FSRVP sequence, a new SMB
session reads the snapshot share, `remotevss shadow create/delete` works from
the same machine, `remotevss sets list/delete` sees and drops a set, and
`--undo` puts every file back.

It changes /etc/samba, /etc/systemd and /etc/remotevss and uses Samba's
default ports and /run/samba: it runs only in a fresh Debian root
(scripts/fresh-debian.sh sets REMOTEVSS_FRESH_ROOT=1; CI runs there) and
skips on a machine someone works on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remotevss.client.rpc import FsrvpCalls
from remotevss.fsrvp.constants import CTX_BACKUP, INTERFACE_UUID
from remotevss.samba.private import stop_sessions
from tests.conftest import LoopFs
from tests.hardening.harness import delete_all, sequence

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.environ.get("REMOTEVSS_FRESH_ROOT") != "1",
                       reason="changes the machine's own Samba: runs only in a fresh Debian root "
                              "(bash scripts/fresh-debian.sh bash scripts/test.sh)"),
]

PASSWORD = "Admin-Passw0rd-1"  # noqa: S105 - a throwaway root of a throwaway Debian root
CLI = [sys.executable, "-m", "remotevss.cli"]
PRIVACY = 6
UNITS = {  # start order, as the units' After=/Before= lines give it
    "winbind": "/lib/systemd/system/winbind.service",
    "samba-dcerpcd": "/etc/systemd/system/samba-dcerpcd.service",
    "remotevss-agent": "/etc/systemd/system/remotevss-agent.service",
    "smbd": "/lib/systemd/system/smbd.service",
}


def exec_start(unit: Path) -> list[str]:
    """ExecStart of a unit as systemd runs it: continuations joined, $VARS from its
    EnvironmentFile (Debian's /etc/default/samba; empty when absent)."""
    text = unit.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    if m := re.search(r"^EnvironmentFile=-?(\S+)", text, re.M):
        envfile = Path(m.group(1))
        if envfile.exists():
            for line in envfile.read_text().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    k, v = line.split("=", 1)
                    env[k.strip()] = v.strip().strip('"')
    m = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert m, f"{unit} has no ExecStart"
    argv = []
    for word in shlex.split(m.group(1)):
        if word.startswith("$"):
            argv += shlex.split(env.get(word[1:].strip("{}"), ""))
        else:
            argv.append(word)
    return argv


def _wait(what: str, ready: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not ready():  # type: ignore[operator]
        assert proc.poll() is None, f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what} not ready in 30 s: {log.read_text()[-2000:]}"
        time.sleep(0.1)


def _connects(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        return s.connect_ex(path) == 0


def _port_open() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", 445)) == 0


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def debian_samba(loopfs: LoopFs, tmp_path: Path) -> Iterator[Path]:
    """Stock smb.conf + [data] on a btrfs subvolume, set up by the command, daemons up."""
    import btrfsutil

    conf = Path("/etc/samba/smb.conf")
    shares = Path("/etc/samba/shares.conf")  # Debian/TrueNAS style: shares included
    stock = Path("/usr/share/samba/smb.conf")
    assert stock.exists(), "Debian's samba ships /usr/share/samba/smb.conf"
    assert not shares.exists()
    before = conf.read_text() if conf.exists() else None
    mnt = loopfs("btrfs")
    btrfsutil.create_subvolume(str(mnt / "data"))
    (mnt / "data" / "report.txt").write_text("version 1\n")
    conf.write_text(stock.read_text() + f"\ninclude = {shares}\n")
    shares.write_text(f"[data]\n   path = {mnt / 'data'}\n   read only = no\n")
    original, original_shares = conf.read_text(), shares.read_text()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        shown = run(*CLI, "setup", "samba")
        assert shown.returncode == 0, shown.stderr
        assert "rpc start on demand helpers = no" in shown.stdout
        assert conf.read_text() == original, "without --yes nothing is changed"
        applied = run(*CLI, "setup", "samba", "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        again = run(*CLI, "setup", "samba", "--yes")
        assert "nothing to change" in again.stdout, again.stdout
        text = conf.read_text()
        assert "[data]" not in text and "rpc start on demand helpers = no" in text, text
        assert "vfs objects = shadow_copy2" in shares.read_text()  # where [data] is
        assert stock.read_text().splitlines()[0] in text  # the admin's comments are kept
        agent_unit = Path(UNITS["remotevss-agent"]).read_text()
        assert re.search(r"^After=.*winbind\.service", agent_unit, re.M), agent_unit
        assert "ExecStart=" + str(Path(sys.executable).parent / "remotevss") in agent_unit

        pw = f"{PASSWORD}\n{PASSWORD}\n"
        subprocess.run(["smbpasswd", "-s", "-a", "root"], input=pw, text=True, check=True,
                       capture_output=True)
        Path("/run/remotevss").mkdir(mode=0o755, exist_ok=True)  # RuntimeDirectory=remotevss
        Path("/var/lib/remotevss").mkdir(mode=0o700, exist_ok=True)  # StateDirectory=remotevss
        Path("/run/samba").mkdir(mode=0o755, exist_ok=True)
        ready = {
            "winbind": lambda: _connects("/run/samba/winbindd/pipe"),
            "samba-dcerpcd": lambda: Path("/run/samba/ncalrpc/np/srvsvc").exists(),
            "remotevss-agent": lambda: _connects("/run/samba/ncalrpc/np/fssagentrpc"),
            "smbd": _port_open,
        }
        for name, unit in UNITS.items():
            argv = exec_start(Path(unit))
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=out,
                                              start_new_session=True))
            _wait(name, ready[name], procs[-1], log)
        yield mnt
    finally:
        stop_sessions(procs)  # each daemon with its children, the last started first
        undone = run(*CLI, "setup", "samba", "--undo")
        assert undone.returncode == 0, undone.stderr
        assert conf.read_text() == original, "--undo restores smb.conf byte for byte"
        assert shares.read_text() == original_shares, "and the included file"
        shares.unlink()
        for unit in ("samba-dcerpcd.service", "remotevss-agent.service"):
            assert not Path("/etc/systemd/system", unit).exists()
        if before is None:
            conf.unlink()
        else:
            conf.write_text(before)
        shutil.rmtree("/etc/remotevss", ignore_errors=True)


class SealedFsrvp(FsrvpCalls):
    """impacket over SMB3: the FSRVP bind NTLM-authenticated at packet privacy."""

    def __init__(self) -> None:
        from impacket.dcerpc.v5 import rpcrt, transport
        from impacket.smbconnection import SMBConnection
        from impacket.uuid import uuidtup_to_bin

        self.smb = SMBConnection("127.0.0.1", "127.0.0.1", timeout=60)
        self.smb.login("root", PASSWORD)
        t = transport.SMBTransport("127.0.0.1", filename=r"\FssagentRpc", smb_connection=self.smb)
        dce = t.get_dce_rpc()
        dce.set_credentials("root", PASSWORD, "")
        dce.set_auth_type(rpcrt.RPC_C_AUTHN_WINNT)
        dce.set_auth_level(PRIVACY)
        dce.connect()
        dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))
        self._dce = dce


def _read_share(share: str, path: str) -> str:
    from impacket.smbconnection import SMBConnection

    c = SMBConnection("127.0.0.1", "127.0.0.1", timeout=60)  # a new session
    try:
        c.login("root", PASSWORD)
        tid = c.connectTree(share)
        fid = c.openFile(tid, path, desiredAccess=0x120089)
        data = c.readFile(tid, fid)
        c.closeFile(tid, fid)
        return data.decode()
    finally:
        c.close()


def test_setup_then_the_whole_sequence_through_debians_samba(debian_samba: Path) -> None:
    doctor = run(*CLI, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "[  ok] FSRVP pipe socket" in doctor.stdout and "btrfs snapshots" in doctor.stdout

    c = SealedFsrvp()
    try:
        sid, copies = sequence(c, ["data"], CTX_BACKUP, host="127.0.0.1", recover=False)
        m = c.get_share_mapping(copies["data"], sid, "\\\\127.0.0.1\\data")
        snap_share = m.mapping.shadow_copy_share_name.rsplit("\\", 1)[-1]
        (debian_samba / "data" / "report.txt").write_text("version 2\n")
        assert _read_share(snap_share, "report.txt") == "version 1\n"
        assert _read_share("data", "report.txt") == "version 2\n"
        listed = run(*CLI, "sets", "list", "--json")
        assert str(sid) in listed.stdout, listed.stdout + listed.stderr
        assert c.recovery_complete(sid).return_value == 0
        delete_all(c, sid, copies, host="127.0.0.1")
        # registry shares written by the agent itself, not by python-samba's worker
        io = json.loads(run(*CLI, "status", "--json").stdout)["io"]
        assert io["registry_ops_agent"] > 0 and io["registry_ops_samba_worker"] == 0, io
    finally:
        c._dce.disconnect()
        c.smb.close()

    env = {"REMOTEVSS_PASSWORD": PASSWORD}
    made = run(*CLI, "shadow", "-U", "root", "create", "\\\\127.0.0.1\\data", env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    set_ids = re.findall(r"\{?([0-9a-f]{8}-[0-9a-f-]{27})\}?", made.stdout)
    assert set_ids, made.stdout
    listed = run(*CLI, "sets", "list", "--json").stdout
    held = [s for s in set_ids if s in listed]
    assert held, (made.stdout, listed)
    gone = run(*CLI, "shadow", "-U", "root", "delete", "{" + held[0] + "}", env=env)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert held[0] not in run(*CLI, "sets", "list", "--json").stdout

    # an admin drops a set whose client went away
    made = run(*CLI, "shadow", "-U", "root", "create", "\\\\127.0.0.1\\data", env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    listed = run(*CLI, "sets", "list", "--json").stdout
    dropped = next(s for s in re.findall(r'"id": "([0-9a-f-]{36})"', listed)
                   if s in made.stdout)
    out = run(*CLI, "sets", "delete", dropped)
    assert out.returncode == 0 and f"deleted set {dropped}" in out.stdout, out.stdout + out.stderr
    assert dropped not in run(*CLI, "sets", "list", "--json").stdout


def test_rerun_after_an_upgrade_restarts_only_what_changed(tmp_path: Path) -> None:
    """An upgrade that changes only the agent's unit (a new version ships another one)
    and `setup samba --yes` again: the agent restarts, smbd does not.  Restarting
    smbd drops every user's session and open files on a file server; setup restarted
    smbd and samba-dcerpcd on every run that changed anything.  And when smb.conf does
    change, smbd is stopped before samba-dcerpcd starts: while the smbd that was running
    keeps its on-demand samba-dcerpcd (Samba's, with rpcd_fsrvp), the unit's exits 1 at
    once (seen on Debian's 4.17 in a fresh root), and restarting it every 100 ms reached
    systemd's start limit before setup's later `restart smbd` ended the other one.
    A later run that only gives a share previous versions reloads smbd instead.

    systemd does not run here: /run/systemd/system and a systemctl that records its
    arguments stand in for it, so the test sees which restarts setup asks for."""
    conf = Path("/etc/samba/smb.conf")
    before = conf.read_text() if conf.exists() else None
    conf.write_text(Path("/usr/share/samba/smb.conf").read_text())
    marker = Path("/run/systemd/system")
    made_marker = not marker.exists()
    marker.mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    unit = Path(UNITS["remotevss-agent"])
    try:
        first = run(*CLI, "setup", "samba", "--yes", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        done = calls.read_text().splitlines()
        # smb.conf changed: smbd restarts, stopped before samba-dcerpcd starts (a running
        # smbd's on-demand samba-dcerpcd makes the unit's exit 1 at once)
        assert done.index("stop smbd") < done.index("restart samba-dcerpcd"), done
        assert done[-1] == "start smbd", done
        calls.unlink()
        # what an older version wrote: the new one differs
        unit.write_text(unit.read_text().replace("TimeoutStopSec=300", "TimeoutStopSec=90"))
        again = run(*CLI, "setup", "samba", "--yes", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        done = calls.read_text().splitlines()
        assert "daemon-reload" in done and "restart remotevss-agent" in done, done
        assert not any(c.endswith(("smbd", "samba-dcerpcd")) and c.startswith("restart")
                       for c in done), done
        # a share given previous versions later: smbd reloads its configuration (a new
        # tree connect gets shadow_copy2), no session is dropped
        calls.unlink()
        with conf.open("a") as f:
            f.write("\n[extra]\n   path = /srv\n")
        later = run(*CLI, "setup", "samba", "--yes", "--share", "extra", env=env)
        assert later.returncode == 0, later.stdout + later.stderr
        done = calls.read_text().splitlines()
        assert "reload smbd" in done, done
        assert not {"stop smbd", "restart smbd", "restart samba-dcerpcd"} & set(done), done
    finally:
        undone = run(*CLI, "setup", "samba", "--undo", "--force", "--no-start")
        assert undone.returncode == 0, undone.stdout + undone.stderr
        if made_marker:
            marker.rmdir()
        if before is None:
            conf.unlink()
        else:
            conf.write_text(before)
        shutil.rmtree("/etc/remotevss", ignore_errors=True)


def test_rerun_keeps_an_agent_that_holds_sets(debian_samba: Path, tmp_path: Path) -> None:
    """An upgrade rewrites the agent's unit while a backup holds a shadow copy set: setup
    --yes leaves the agent running and says when to restart it.  Restarting it released
    the unfinished set under the backup (as --undo refuses to, docs/samba.md).
    A systemctl that records its arguments stands in for systemd, as above."""
    env = {"REMOTEVSS_PASSWORD": PASSWORD}
    made = run(*CLI, "shadow", "-U", "root", "create", "\\\\127.0.0.1\\data", env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    listed = run(*CLI, "sets", "list", "--json").stdout
    held = [s for s in re.findall(r'"id": "([0-9a-f-]{36})"', listed) if s in made.stdout]
    assert held, (made.stdout, listed)
    marker = Path("/run/systemd/system")
    made_marker = not marker.exists()
    marker.mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    unit = Path(UNITS["remotevss-agent"])
    try:
        unit.write_text(unit.read_text().replace("TimeoutStopSec=300", "TimeoutStopSec=90"))
        again = run(*CLI, "setup", "samba", "--yes", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert again.returncode == 0, again.stdout + again.stderr
        done = calls.read_text().splitlines()
        assert "restart remotevss-agent" not in done, done
        assert "systemctl restart remotevss-agent" in again.stderr and held[0] in again.stderr, \
            again.stderr
        assert "TimeoutStopSec=300" in unit.read_text()  # the file is written all the same
    finally:
        if made_marker:
            marker.rmdir()
        for set_id in held:
            run(*CLI, "sets", "delete", set_id)
