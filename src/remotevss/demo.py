"""The README demo: a shadow copy of an SMB share, taken through Samba's smbd by our agent.

What it runs, all of it private and on loopback (nothing of the machine's own
Samba is touched, no disk is used but a sparse image file):

1. a btrfs on a loop device, share ``data`` = a subvolume with ``report.txt``;
2. a private Samba (remotevss.samba.private): smbd on a high port of
   127.0.0.1, samba-dcerpcd with its helpers but without rpcd_fsrvp
   (docs/samba.md, recipe B), private config, tdbs, sockets and logs;
3. ``remotevss agent`` on that Samba's ``\\pipe\\FssagentRpc`` (spec mode,
   shares from Samba's config, snapshot shares as registry shares, RPC calls
   only at packet integrity or privacy: a private winbindd checks NTLM);
4. Samba's own client tools: an unauthenticated ``rpcclient`` is refused,
   then a sealed ``rpcclient fss_create_expose`` takes and exposes
   the shadow copy, the live file changes, ``smbclient`` reads both the live
   share and the snapshot share ``data@{guid}`` (point-in-time content),
   ``rpcclient fss_delete`` deletes it and ``smbclient`` shows the share gone;
5. everything is stopped and removed, and the demo checks that no process,
   mount or loop device is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from remotevss.loopfs import loop_filesystem
from remotevss.samba.private import PrivateAgent, PrivateSamba, missing_tools

SHARE = "data"
FILE = "report.txt"
TOOLS = ("smbd", "winbindd", "ntlm_auth", "unshare", "rpcclient", "smbclient", "smbpasswd", "net",
         "mkfs.btrfs", "findmnt")
_CREATED = re.compile(r"([0-9a-f-]{36})\(([0-9a-f-]{36})\): share (\S+) exposed as a snapshot")


class DemoFailed(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def _indented(text: str) -> None:
    for line in text.strip().splitlines():
        say(f"      {line}")


def _status(out: subprocess.CompletedProcess[str]) -> str:
    m = re.search(r"NT_STATUS_\w+", out.stdout + out.stderr)
    return m.group(0) if m else f"exit {out.returncode}"


def _read(samba: PrivateSamba, share: str) -> str:
    """``smbclient //127.0.0.1/SHARE -c 'get report.txt -'``: the file, or the NT status."""
    out = samba.smbclient(share, f"get {FILE} -")
    if out.returncode != 0:
        return _status(out)
    return out.stdout.split("getting file")[0].strip()


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    say(f"      ({what}: {(time.perf_counter() - t0) * 1000:.0f} ms)")


def _loop_device(mnt: Path) -> str:
    out = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def run_demo(verbose: int = 0) -> int:
    if os.geteuid() != 0:
        print("remotevss demo needs root (loop btrfs, smbd)", file=sys.stderr)
        return 2
    if missing := missing_tools(*TOOLS):
        print(
            f"remotevss demo: missing {', '.join(missing)}; run scripts/bootstrap.sh",
            file=sys.stderr,
        )
        return 2
    say("remotevss demo: a shadow copy of an SMB share, through Samba's smbd and our agent")
    watched: list[int] = []  # process groups / pids that must be gone at the end
    with tempfile.TemporaryDirectory(prefix="remotevss-demo-") as tmp:
        loop_dev = ""
        mnt_point: Path | None = None
        try:
            with loop_filesystem("btrfs", 256, tmp) as mnt:
                mnt_point = mnt
                loop_dev = _loop_device(mnt)
                rc = _demo(Path(tmp), mnt, loop_dev, watched, verbose)
        except DemoFailed as exc:
            say(f"demo FAILED: {exc}")
            rc = 1
        say("* stopped the agent and Samba; unmounted the btrfs and removed the temporary files")
        left = []
        if alive := _pids_alive(watched):
            left.append(f"processes {alive}")
        if mnt_point is not None and os.path.ismount(mnt_point):
            left.append(f"mount {mnt_point}")
        if loop_dev and os.path.exists(f"/sys/block/{Path(loop_dev).name}/loop/backing_file"):
            left.append(f"loop device {loop_dev}")
    if left:
        say(f"* LEFT BEHIND: {', '.join(left)}")
        return 1
    say(f"* nothing left behind: no Samba or agent process, no mount, {loop_dev} detached")
    if rc == 0:
        say("demo OK")
    return rc


def _demo(tmp: Path, mnt: Path, loop_dev: str, watched: list[int], verbose: int) -> int:
    import btrfsutil

    share = mnt / SHARE
    btrfsutil.create_subvolume(str(share))
    (share / FILE).write_text("quarterly figures: version 1\n")
    say(f"* btrfs on {loop_dev} at {mnt}")
    say(f"      share '{SHARE}' = btrfs subvolume {share}")
    say(f"      {FILE}: 'quarterly figures: version 1'")

    samba = PrivateSamba(
        tmp / "samba",
        {SHARE: share},
        samba_fsrvp=False,
        netbios_name="DEMOFS",
        password=secrets.token_urlsafe(12),
        winbind=True,  # RPC credentials are checked by Samba's ntlm_auth through winbindd
        share_options={  # snapshots as Windows "Previous Versions"
            SHARE: {
                "vfs objects": "shadow_copy2",
                "shadow:snapdir": ".snapshots",
                "shadow:sort": "desc",
            }
        },
    )
    agent = PrivateAgent(
        tmp / "agent", samba, snapshot_names="gmt", min_level="integrity",
        verbose=max(verbose, 1),
    )  # fmt: skip
    try:
        samba.start()
        watched.extend(p.pid for p in samba.procs)
        say(
            f"* private Samba: smbd on 127.0.0.1:{samba.port}, samba-dcerpcd without "
            "rpcd_fsrvp (docs/samba.md, recipe B)"
        )
        say(f"      config {samba.conf}")
        agent.start()
        assert agent.proc is not None
        watched.append(agent.proc.pid)
        say(f"* remotevss agent (spec mode) serving \\pipe\\FssagentRpc on {agent.pipe}")
        say("      RPC calls must be signed or sealed (NTLM checked by Samba's winbindd)")
        say(f"      {' '.join(['remotevss', *agent.argv[3:]])}")
        rc = _sequence(samba, agent, share)
    except BaseException:
        verbose = max(verbose, 1)  # show the agent's side of what went wrong
        raise
    finally:
        agent.stop()
        samba.stop()
        if verbose and agent.log.exists():
            say("* agent log:")
            _indented(agent.log.read_text())
    return rc


def _sequence(samba: PrivateSamba, agent: PrivateAgent, share: Path) -> int:
    cmd = f"fss_create_expose backup ro {SHARE}"
    say(f"* rpcclient 127.0.0.1 -c '{cmd}' (no RPC authentication)")
    out = samba.rpcclient(cmd, check=False)
    denied = re.search(r"(?i)access.?denied|0x80070005", out.stdout + out.stderr)
    if not denied or list((share / ".snapshots").glob("*")):
        raise DemoFailed("an unauthenticated call was not refused")
    say("      refused: E_ACCESSDENIED, nothing created (MS-FSRVP wants integrity or privacy)")
    say(f"* rpcclient ncacn_np:127.0.0.1[seal] -U {samba.netbios_name}\\root -c '{cmd}'")
    with _step("shadow copy taken and exposed"):
        out = samba.rpcclient(cmd, check=False, auth="seal")
        _indented(out.stdout + out.stderr)
    m = _CREATED.search(out.stdout)
    if out.returncode != 0 or m is None:
        raise DemoFailed(f"fss_create_expose failed; agent log: {agent.log}")
    set_id, copy_id, snap_share = m.groups()
    snapshots = sorted(p.name for p in (share / ".snapshots").iterdir())
    say(f"      snapshot on disk: {share}/.snapshots/{', '.join(snapshots)}")

    (share / FILE).write_text("quarterly figures: version 2 (after the snapshot)\n")
    say("* the live file changes: 'quarterly figures: version 2 (after the snapshot)'")
    live, snap = _read(samba, SHARE), _read(samba, snap_share)
    say(f"* smbclient //127.0.0.1/{SHARE} -c 'get {FILE} -'")
    say(f"      {live!r}")
    say(f"* smbclient //127.0.0.1/{snap_share} -c 'get {FILE} -'")
    say(f"      {snap!r}")
    if snap != "quarterly figures: version 1":
        raise DemoFailed(f"the snapshot share does not hold the point-in-time file: {snap!r}")
    say("      the snapshot share holds the point-in-time version")
    labels = re.findall(r"^@GMT-\S+", samba.smbclient(SHARE, f"allinfo {FILE}").stdout, re.M)
    say(f"* previous versions of {FILE} (shadow_copy2): {', '.join(labels) or 'none'}")

    cmd = f"fss_delete {SHARE} {set_id} {copy_id}"
    say(f"* rpcclient ncacn_np:127.0.0.1[seal] -c '{cmd}'")
    with _step("shadow copy deleted"):
        out = samba.rpcclient(cmd, check=False, auth="seal")
        _indented(out.stdout + out.stderr)
    if out.returncode != 0:
        raise DemoFailed("fss_delete failed")
    gone = _read(samba, snap_share)
    left = sorted(p.name for p in (share / ".snapshots").iterdir())
    registry = [x for x in samba.net("conf", "listshares").stdout.split() if "@{" in x]
    say(f"* smbclient //127.0.0.1/{snap_share} -c 'get {FILE} -'")
    say(f"      {gone}")
    say(f"      snapshots on disk: {len(left)}; registry snapshot shares: {len(registry)}")
    if gone != "NT_STATUS_BAD_NETWORK_NAME" or left or registry:
        raise DemoFailed("the shadow copy is not gone")
    return 0
