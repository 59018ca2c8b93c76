"""`remotevss doctor`: every prerequisite of the agent behind Samba, each with its fix.

Why: the failures an admin meets first are all outside the agent (a missing
VFS module makes a share unreachable, Samba's own rpcd_fsrvp grabs the pipe,
ntlm_auth cannot reach winbindd so every bind is refused) and each one looks,
from Windows, like "the server does not support shadow copies".  Each check
names what it saw and the command that fixes it.

Exit status: 0 every check passed (warnings allowed), 1 at least one check
failed, 2 the configuration could not be read.

Rules of this module: read-only.  The only things it runs are Samba's own
tools (``smbd -b``, ``ntlm_auth`` with a user name that does not exist, which
cannot lock any account out), Samba's loadparm in a child and a read of its
registry (the registry shares the agent serves too, read as the agent reads
them), and one status request to the agent.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from remotevss.samba.conf import samba_bool
from remotevss.setup.smbconf_files import IncludeError, SmbConfFiles
from remotevss.setup.smbconf_text import ERRORS, shown

OK, WARN, FAIL = "ok", "warn", "FAIL"
PROBE_USER = "remotevss-doctor-no-such-user"


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


def _run(argv: list[str], timeout: float = 20) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer in {timeout:.0f} s"
    return p.returncode, p.stdout + p.stderr


def modules_dir() -> Path | None:
    """Samba's MODULESDIR as smbd was built (``smbd -b``)."""
    rc, out = _run(["smbd", "-b"])
    m = re.search(r"^\s*MODULESDIR:\s*(\S+)", out, re.M)
    return Path(m.group(1)) if rc == 0 and m else None


def _read_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text(errors=ERRORS)
    except FileNotFoundError:
        return None


def check_includes(conf: SmbConfFiles) -> Check:
    """The files read with smb.conf; a warning for each include that is not followed
    (missing, or per client: its shares are not checked) or is relative."""
    files = conf.files()
    notes = [i.describe() for i in conf.includes if i.worth_a_note]
    read = f"{len(files)} file(s) read: {', '.join(files)}"
    fixable = any(i.status == "missing" or i.relative for i in conf.includes)
    if notes:
        return Check("smb.conf includes", WARN, f"{read}; " + "; ".join(notes),
                     "use absolute include paths to files that exist" if fixable else "")
    return Check("smb.conf includes", OK, read)


def check_vfs_modules(conf: SmbConfFiles) -> list[Check]:
    from remotevss.setup.samba_setup import vfs_modules

    wanted: dict[str, list[str]] = {}
    for name in ["global", *conf.share_names()]:
        for mod in vfs_modules(conf.get(name, "vfs objects")):
            wanted.setdefault(mod, []).append(name)
    if not wanted:
        return [Check("VFS modules", OK, "no share names a VFS module")]
    mdir = modules_dir()
    if mdir is None:
        return [Check("VFS modules", FAIL, "smbd -b does not say where Samba's modules are",
                      "apt-get install samba")]
    missing = [m for m in wanted if not (mdir / "vfs" / f"{m}.so").exists()]
    if missing:
        shares = sorted({s for m in missing for s in wanted[m]})
        return [Check("VFS modules", FAIL,
                      f"{', '.join(missing)} not in {mdir / 'vfs'}: tree connects to "
                      f"{', '.join(shares)} fail (NT_STATUS_BAD_NETWORK_NAME)",
                      "apt-get install samba-vfs-modules")]
    return [Check("VFS modules", OK, f"{', '.join(sorted(wanted))} present in {mdir / 'vfs'}")]


def check_shares(conf: SmbConfFiles) -> list[Check]:
    from remotevss.setup.samba_setup import disk_shares

    return [_share_check(f"share [{name}]", path) for name, path in disk_shares(conf)]


def check_registry_shares(smb_conf: str, file_shares: list[str]) -> list[Check]:
    """Shares made with ``net conf addshare``: the agent serves them like smb.conf's
    (read live from Samba's registry), so each gets the same check.  Snapshot
    shares (``share@{guid}``) and names an smb.conf share shadows are left out."""
    from remotevss.samba._lib import SambaUnavailable
    from remotevss.samba.conf import SambaConfigError, is_snapshot_share_name, shared_conf
    from remotevss.samba.shares import SambaShareTable

    shadowed = {n.casefold() for n in file_shares}
    try:
        conf = shared_conf(smb_conf)
        if not conf.registry_shares:
            return []
        table = SambaShareTable(conf)
        shares = [table.lookup(n) for n in conf.registry_share_names()
                  if not is_snapshot_share_name(n) and n.casefold() not in shadowed]
    except (SambaConfigError, SambaUnavailable, OSError) as exc:
        return [Check("registry share list", FAIL, f"cannot read Samba's registry shares: {exc}")]
    return [_share_check(f"registry share [{s.name}]", s.path) for s in shares if s is not None]


def _share_check(label: str, path: str) -> Check:
    """What the agent will make of a share path: the backend, or why none can work
    (the reason a client only sees as FSRVP_E_NOT_SUPPORTED)."""
    from remotevss.setup.samba_setup import one_directory
    from remotevss.snapshots.base import SnapshotError
    from remotevss.snapshots.select import choose_backend

    if not one_directory(path):
        return Check(label, WARN, f"path {path or '(none)'} is not one directory: not snapshotted")
    try:
        backend = choose_backend(path)
        backend.check(path)
    except (SnapshotError, OSError) as exc:
        return Check(label, FAIL, f"{path}: no backend can snapshot it ({exc})",
                     "put the share on btrfs, XFS (reflink) or ZFS, or fix the path")
    if backend.name == "copy":
        return Check(label, WARN, f"{path}: plain copy backend (every snapshot copies the data)",
                     "move the share to btrfs, XFS with reflink or ZFS")
    return Check(label, OK, f"{path}: {backend.name} snapshots")


GMT_FORMAT = "@GMT-%Y.%m.%d-%H.%M.%S"  # shadow_copy2's default shadow:format


def check_previous_versions(conf: SmbConfFiles, snapshot_names: str) -> list[Check]:
    """Shares with shadow_copy2 list the agent's snapshots as Windows' Previous
    Versions only in the agent's layout: ``<subvolume>/.snapshots/@GMT-...``
    (``snapshot_names = "gmt"``).  A share set up for other snapshots (e.g.
    ``shadow:snapdir = .zfs/snapshot``) keeps working, but lists those instead."""
    from remotevss.setup.samba_setup import disk_shares, vfs_modules

    def param(share: str, key: str) -> str | None:  # a share's, else [global]'s
        value = conf.get(share, key)
        return value if value is not None else conf.get("global", key)

    shares, problems = [], []
    for name, _path in disk_shares(conf):
        if "shadow_copy2" not in vfs_modules(param(name, "vfs objects")):
            continue
        shares.append(name)
        snapdir, fmt = param(name, "shadow:snapdir"), param(name, "shadow:format")
        if snapdir not in (None, ".snapshots"):
            problems.append(f"[{name}] shadow:snapdir = {snapdir}, the agent's snapshots "
                            "are in .snapshots")
        if fmt not in (None, GMT_FORMAT):
            problems.append(f"[{name}] shadow:format = {fmt}, the agent's names are "
                            f"{GMT_FORMAT}")
    if not shares:
        return []
    if snapshot_names != "gmt":
        problems.append(f'snapshot_names = "{snapshot_names}": shadow_copy2 lists such '
                        "snapshots but cannot open them")
    if problems:
        return [Check("previous versions", WARN, "; ".join(problems),
                      'snapshot_names = "gmt" in [agent]; shadow:snapdir = .snapshots and no '
                      "shadow:format in those shares")]
    return [Check("previous versions", OK,
                  f"{', '.join(shares)}: the agent's snapshots are listed as previous versions")]


def check_globals(conf: SmbConfFiles) -> list[Check]:
    from remotevss.setup.samba_setup import ad_dc

    out = []
    if ad_dc(conf):
        out.append(Check("server role", WARN, f"{conf.get('global', 'server role')}: an AD DC "
                         "(its own smbd, winbindd and RPC server); setup samba refuses it and "
                         "the agent is tested on standalone servers and domain members only",
                         "serve file shares from a domain member"))
    if not samba_bool(conf.get("global", "rpc start on demand helpers"), default=True):
        out.append(Check("rpc start on demand helpers", OK, "no: smbd will not start rpcd_fsrvp"))
    else:
        out.append(Check("rpc start on demand helpers", FAIL,
                         "on: smbd starts samba-dcerpcd, which starts Samba's own rpcd_fsrvp "
                         "on \\pipe\\FssagentRpc", "remotevss setup samba --yes"))
    if samba_bool(conf.get("global", "registry shares")) or conf.registry_include:
        out.append(Check("registry shares", OK, "on: snapshot shares are visible at once"))
    else:
        out.append(Check("registry shares", FAIL, "off: smbd would never see snapshot shares",
                         "remotevss setup samba --yes"))
    return out


def _socket_owners(path: Path) -> list[tuple[int, str]]:
    """Processes holding the listening unix socket bound to ``path``."""
    inodes = set()
    try:
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path):
                inodes.add(fields[6])
    except OSError:
        return []
    owners = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                owners.append((int(pid), cmd.decode(errors="replace").strip()))
                break
    return owners


def check_pipe(pipe: Path) -> Check:
    if not pipe.is_socket():
        return Check("FSRVP pipe socket", FAIL, f"{pipe} does not exist: the agent is not serving "
                     "Samba", "systemctl start remotevss-agent")
    owners = _socket_owners(pipe)
    names = " | ".join(cmd for _, cmd in owners)
    if any("rpcd_fsrvp" in c or "samba-dcerpcd" in c for _, c in owners):
        return Check("FSRVP pipe socket", FAIL, f"{pipe} is served by Samba's own FSRVP server "
                     f"({names})", "remotevss setup samba --yes, then restart samba-dcerpcd and "
                     "the agent")
    if owners and not any("remotevss" in c for _, c in owners):
        return Check("FSRVP pipe socket", FAIL, f"{pipe} is served by {names}",
                     "stop that process and restart remotevss-agent")
    return Check("FSRVP pipe socket", OK, f"{pipe} is the agent's" + (
        f" ({owners[0][0]})" if owners else ""))


def check_winbind(smb_conf: str, ntlm_auth: tuple[str, ...]) -> Check:
    """A logon for a user that does not exist, in this server's own domain (its netbios
    name: the local SAM, on a standalone server and on a member alike): winbindd
    answers NO_SUCH_USER or a logon failure; without winbindd, ntlm_auth cannot ask:
    on a member every NTLM bind is refused, on a standalone server those that name
    this server's domain (the agent checks other names against the local SAM)."""
    from remotevss.samba.pipedir import PipeDirError, samba_parameter

    try:
        own = samba_parameter(smb_conf, "netbios name")
    except PipeDirError as exc:
        return Check("winbindd via ntlm_auth", FAIL, str(exc))
    rc, out = _run([*ntlm_auth, f"--configfile={smb_conf}", f"--username={PROBE_USER}",
                    f"--domain={own}", "--password=x"])
    if re.search(r"NT_STATUS_(NO_SUCH_USER|LOGON_FAILURE|WRONG_PASSWORD)", out):
        return Check("winbindd via ntlm_auth", OK, "winbindd answers ntlm_auth's logons")
    if rc == 127:
        return Check("winbindd via ntlm_auth", FAIL, out.strip(), "apt-get install winbind")
    last = out.strip().splitlines()[-1] if out.strip() else f"exit {rc}"
    refused = "every NTLM RPC bind would be refused"
    if _standalone(smb_conf):  # as the agent maps names (ntlm_auth.LocalSamLogon)
        refused = (f"NTLM RPC binds as {own}\\user would be refused (binds naming another "
                   f"domain, or none, are checked against the local SAM without winbindd)")
    return Check("winbindd via ntlm_auth", FAIL, f"ntlm_auth cannot check logons ({last}): "
                 f"{refused}", "systemctl enable --now winbind (the agent's unit starts after it)")


def _standalone(smb_conf: str) -> bool:
    from remotevss.agent.samba_components import is_standalone
    from remotevss.samba._lib import SambaUnavailable
    from remotevss.samba.conf import SambaConfigError, shared_conf

    try:
        return is_standalone(shared_conf(smb_conf))
    except (SambaUnavailable, SambaConfigError):  # unknown: say the worse
        return False


def check_agent(admin_socket: str, sequence_timeout: float | None) -> list[Check]:
    from remotevss.agent import admin

    out = []
    try:
        st = admin.request(admin_socket, "status", timeout=10)
    except admin.AdminPermissionDenied as exc:
        out.append(Check("agent", FAIL, str(exc), "run remotevss doctor as root"))
    except (admin.AgentUnreachable, admin.AdminError, OSError) as exc:
        out.append(Check("agent", FAIL, f"no answer on {admin_socket}: {exc}",
                         "systemctl start remotevss-agent; journalctl -u remotevss-agent"))
    else:
        problems = st.get("problems") or []
        out.append(Check("agent", FAIL if problems else OK,
                         "; ".join(problems) if problems else
                         f"running, {len(st.get('sets', []))} set(s) held"))
    if sequence_timeout == 0:
        out.append(Check("sequence timer", WARN, "off (sequence_timeout = 0): an abandoned "
                         "sequence keeps its snapshots until the next GC pass"))
    else:
        t = ("spec values (180 s; 1800 s after Add, Prepare and GetShareMapping)"
             if sequence_timeout is None
             else f"{sequence_timeout:g} s")
        out.append(Check("sequence timer", OK, t))
    return out


def run_checks(config_path: str | None) -> tuple[list[Check], int]:
    from remotevss.agent.config import ConfigError, load_config
    from remotevss.samba.pipedir import PipeDirError, default_pipe_dir

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [Check("agent configuration", FAIL, str(exc))], 2
    smb_conf = config.samba.config_file
    checks = [Check("agent configuration", OK, config_path or "(built-in defaults)")]
    if not smb_conf:
        checks.append(Check("Samba", FAIL, "[samba] config_file is not set: the agent serves "
                            "only its local socket", "remotevss setup samba --yes"))
        return checks, 1
    try:
        conf = SmbConfFiles(smb_conf, _read_or_none)
    except FileNotFoundError:
        return [*checks, Check("smb.conf", FAIL, f"{smb_conf} does not exist",
                               "apt-get install samba, or fix [samba] config_file")], 2
    except (OSError, IncludeError) as exc:
        return [*checks, Check("smb.conf", FAIL, f"{smb_conf}: {exc}")], 2
    checks += [check_includes(conf), *check_vfs_modules(conf), *check_globals(conf),
               *check_shares(conf), *check_previous_versions(conf, config.snapshot_names)]
    if config.samba.shares == "samba":
        checks += check_registry_shares(smb_conf, conf.share_names())
        if not any(c.name.startswith(("share [", "registry share [")) for c in checks):
            checks.append(Check(
                "shares", WARN, "no share the agent could snapshot: [homes], [printers] and "
                "print$ are never snapshotted, and there is no other (every FSRVP request "
                "is answered 'not supported')",
                "add a share: [name] with path = a directory on btrfs, XFS (reflink) or ZFS"))
    try:
        pipe_dir = (Path(config.samba.pipe_dir) if config.samba.pipe_dir
                    else default_pipe_dir(smb_conf))
        checks.append(check_pipe(pipe_dir / "fssagentrpc"))
    except PipeDirError as exc:
        checks.append(Check("FSRVP pipe socket", FAIL, str(exc)))
    if config.rpc_auth.min_level != "none":
        checks.append(check_winbind(smb_conf, config.rpc_auth.ntlm_auth))
    checks += check_agent(config.admin_socket_path, config.sequence_timeout)
    return checks, 1 if any(c.result == FAIL for c in checks) else 0


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{c.result:>4}] {c.name}: {c.detail}")
        if c.fix and c.result != OK:
            lines.append(f"       fix: {c.fix}")
    return shown("\n".join(lines) + "\n")

