"""`remotevss setup samba`: make the machine's own Samba hand FSRVP to the agent.

Why a command: the recipe (docs/samba.md, "Recipe B") touches five files
across Samba, systemd and remotevss, and one wrong line (samba-dcerpcd without
``-s``, rpcd_fsrvp still on demand, no winbindd for ntlm_auth) leaves an agent
that starts and then answers nobody.  The command computes every change from
what is on the machine, shows it, applies it only with ``--yes``, changes
nothing on a second run, and keeps the files as they were so that ``--undo``
puts them back.

What it changes (``root`` prefixes every path, for tests and image builds):

* smb.conf ``[global]``: ``rpc start on demand helpers = no`` (smbd must not
  start samba-dcerpcd, which would start Samba's own rpcd_fsrvp on the pipe),
  ``registry shares = yes`` (snapshot shares are registry shares);
* smb.conf shares that get previous versions: ``vfs objects`` gains
  ``shadow_copy2`` (appended to the share's effective list: [global]'s when the
  share has no line of its own, which would otherwise replace it),
  ``shadow:snapdir = .snapshots``, ``shadow:sort = desc``;
  by default every share whose path has a cheap snapshot backend (btrfs, zfs,
  reflink), or the ones named with ``--share``;
* ``samba-dcerpcd.service``: samba-dcerpcd run by systemd with ``-s`` and an
  explicit helper list without rpcd_fsrvp, before smbd;
* ``remotevss-agent.service``: the agent, after winbind and samba-dcerpcd,
  before smbd;
* the agent's TOML (``snapshot_names = "gmt"`` so shadow_copy2 maps previous
  versions; ``[samba] config_file``): written when there is none, else the
  keys missing from it are added and everything else is kept;
* ``*.wants`` links that enable winbind (ntlm_auth checks every NTLM bind
  through winbindd), samba-dcerpcd and the agent.

Rules of this module: paths are built from ``root``; every write goes through
:class:`Change` so that it is shown first and recorded for ``--undo``.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remotevss.samba.conf import samba_bool
from remotevss.setup.smbconf_files import EditError, IncludeError, SmbConfFiles
from remotevss.setup.smbconf_text import ERRORS, shown

RPCD_DIR = "/usr/libexec/samba"
SYSTEMD_DIR = "/etc/systemd/system"
DEBIAN_UNITS = "/lib/systemd/system"
UNDO_DIR = "/var/lib/remotevss/setup-undo"
#: Shares that are never snapshot targets (Samba's special sections).
SPECIAL = {"global", "homes", "printers", "print$", "ipc$"}
CHEAP_BACKENDS = ("btrfs", "zfs", "reflink")


@dataclass(frozen=True)
class Change:
    """One file (or symlink) to create or rewrite; ``new`` None removes it."""

    path: str  # absolute, as on the target system (without root)
    old: str | None
    new: str | None
    why: list[str]
    link: bool = False  # a symlink whose target is ``new``


@dataclass(frozen=True)
class Plan:
    root: Path
    changes: list[Change]
    notes: list[str]
    #: smbd must restart, not just reload: ``rpc start on demand helpers`` changed, and
    #: the samba-dcerpcd a running smbd started on demand (with rpcd_fsrvp) ends with it.
    smbd_restart: bool = False

    def describe(self) -> str:
        if not self.changes:
            return "nothing to change: this machine is set up already\n"
        out = []
        for c in self.changes:
            verb = "create" if c.old is None else "change"
            what = f"link -> {c.new}" if c.link else verb
            out.append(f"{c.path}: {what}")
            out += [f"    {w}" for w in c.why]
            if c.old is not None and c.new is not None and not c.link:
                diff = difflib.unified_diff(c.old.splitlines(), c.new.splitlines(),
                                            c.path, c.path + " (new)", lineterm="", n=1)
                out += [f"    | {d}" for d in diff]
        return shown("\n".join(out + [f"note: {n}" for n in self.notes]) + "\n")


@dataclass(frozen=True)
class SetupOptions:
    root: Path = Path("/")
    smb_conf: str = "/etc/samba/smb.conf"
    agent_config: str = "/etc/remotevss/agent.toml"
    shares: tuple[str, ...] = ()  # empty: every share on a cheap snapshot backend
    executable: str = ""  # the remotevss program the unit runs


def at(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def file_at(root: Path, path: str) -> Path:
    """The file ``path`` is on the target, through symlinks (an admin's smb.conf may
    be a link to a generated or shared file): edits go into that file and keep the
    link.  Absolute link targets are taken below ``root``, as the target sees them."""
    p = at(root, path)
    for _ in range(16):
        if not p.is_symlink():
            return p
        target = os.readlink(p)
        p = at(root, target) if target.startswith("/") else p.parent / target
    raise SetupError(f"{path}: too many levels of symbolic links")


def _read(p: Path) -> str | None:
    """The file's text exactly (CRLF line ends kept: --undo restores it byte for byte)."""
    try:
        with open(p, newline="", errors=ERRORS) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _link(p: Path) -> str | None:
    return os.readlink(p) if p.is_symlink() else None


def backend_of(path: str) -> str:
    """The backend the agent would choose for a share path ('' if none can)."""
    from remotevss.snapshots.base import SnapshotError
    from remotevss.snapshots.select import choose_backend

    try:
        backend = choose_backend(path)
        backend.check(path)
        return backend.name
    except (SnapshotError, OSError):
        return ""


def disk_shares(conf: SmbConfFiles) -> list[tuple[str, str]]:
    """(name, path) of every share a snapshot could be for, as the agent's share table
    has them: not one of Samba's special sections, not printable, not switched off
    (``available = no``: smbd refuses it, the agent too); path "" when unset."""
    def param(share: str, key: str) -> str | None:  # a share's, else [global]'s default
        value = conf.get(share, key)
        return value if value is not None else conf.get("global", key)

    return [(n, conf.get(n, "path") or "") for n in conf.share_names()
            if n.lower() not in SPECIAL and not samba_bool(param(n, "printable"))
            and samba_bool(param(n, "available"), default=True)]


def one_directory(path: str) -> bool:
    """A path the agent can snapshot: set, and without %-substitutions."""
    return bool(path) and "%" not in path


def previous_versions_shares(conf: SmbConfFiles, root: Path,
                             wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(shares to give shadow_copy2, notes) from ``--share`` or the backends."""
    notes: list[str] = []
    names = [n for n in conf.share_names() if n.lower() not in SPECIAL]
    if wanted:
        by_lower = {n.lower(): n for n in names}
        missing = [w for w in wanted if w.lower() not in by_lower]
        if missing:
            unseen = [i.describe() for i in conf.includes if i.status == "per-client"]
            if samba_bool(conf.get("global", "registry shares")):
                unseen.append("a share made with 'net conf addshare' lives in Samba's "
                              "registry, which setup does not edit: give it shadow_copy2 "
                              "with 'net conf setparm' (docs/samba.md, Previous Versions)")
            raise SetupError(f"no such share in {' or '.join(conf.files())}: "
                             f"{', '.join(missing)}" + "".join(f"\n  ({u})" for u in unseen))
        return [by_lower[w.lower()] for w in wanted], notes
    chosen = []
    for name, path in disk_shares(conf):
        if not one_directory(path):
            continue
        backend = backend_of(str(at(root, path)))
        if backend in CHEAP_BACKENDS:
            chosen.append(name)
        else:
            notes.append(f"[{name}] ({path}) gets no previous versions: "
                         f"{'backend ' + backend if backend else 'not snapshot-capable'}; "
                         f"name it with --share to include it")
    return chosen, notes


class SetupError(Exception):
    """The machine's configuration does not allow the setup; nothing was changed."""


def vfs_modules(value: str | None) -> list[str]:
    """The modules of a ``vfs objects`` value, in order; Samba splits lists at blanks,
    commas and semicolons."""
    return [m for m in re.split(r"[\s,;]+", value or "") if m]


def read_smb_conf(opts: SetupOptions) -> SmbConfFiles:
    """smb.conf and the files it includes, as on the target system (below ``root``)."""
    try:
        return SmbConfFiles(opts.smb_conf, lambda path: _read(file_at(opts.root, path)))
    except FileNotFoundError:
        raise SetupError(f"{opts.smb_conf} does not exist: install samba first") from None
    except IncludeError as exc:
        raise SetupError(f"{opts.smb_conf}: {exc}") from exc


#: ``server role`` values Samba takes for an Active Directory DC (testparm:
#: ROLE_ACTIVE_DIRECTORY_DC), compared without case and extra blanks.
AD_DC_ROLES = {"dc", "domain controller", "active directory domain controller"}
AD_DC_REFUSAL = ("Samba's AD DC (samba-ad-dc.service) runs its own smbd, winbindd and RPC "
                 "server; this setup starts Debian's winbind.service and a samba-dcerpcd "
                 "beside them and restarts smbd.service, which is for standalone servers and "
                 "domain members")


def ad_dc(conf: SmbConfFiles) -> bool:
    """smb.conf says this is an Active Directory domain controller."""
    role = " ".join((conf.get("global", "server role") or "").lower().split())
    return role in AD_DC_ROLES


def _smb_conf_changes(opts: SetupOptions) -> tuple[list[Change], list[str], bool]:
    """The edits of smb.conf and of the included files that define what is edited, and
    whether ``rpc start on demand helpers`` changed (smbd must restart)."""
    conf = read_smb_conf(opts)
    if ad_dc(conf):
        raise SetupError(f"{opts.smb_conf}: server role = {conf.get('global', 'server role')}: "
                         f"{AD_DC_REFUSAL}; nothing was changed")
    why: dict[str, list[str]] = {}

    def put(section: str, key: str, value: str, reason: str) -> bool:
        try:
            file = conf.set(section, key, value)
        except EditError as exc:
            raise SetupError(str(exc)) from exc
        if file is not None:  # shown under that file's name in the plan
            why.setdefault(file, []).append(f"[{section}] {key} = {value}: {reason}")
        return file is not None

    restart = put("global", "rpc start on demand helpers", "no",
                  "smbd must not start samba-dcerpcd with rpcd_fsrvp on \\pipe\\FssagentRpc")
    put("global", "registry shares", "yes", "snapshot shares share@{GUID} are registry shares")
    shares, notes = previous_versions_shares(conf, opts.root, opts.shares)
    for name in shares:
        own = conf.get(name, "vfs objects")
        vfs = vfs_modules(own if own is not None else conf.get("global", "vfs objects"))
        if "shadow_copy2" not in vfs:
            line = " ".join([*vfs, "shadow_copy2"])
            kept = ("" if own is not None or not vfs else
                    f"; [global]'s {' '.join(vfs)} kept: a share's own line replaces it")
            put(name, "vfs objects", line, f"snapshots as previous versions{kept}")
        for key, value, reason in (
                ("shadow:snapdir", ".snapshots", "where the agent puts snapshots"),
                ("shadow:sort", "desc", "newest first, as Windows lists them")):
            have = conf.get(name, key)
            if have is None:
                put(name, key, value, reason)
            elif key == "shadow:snapdir" and have != value:
                notes.append(f"[{name}] shadow:snapdir = {have} kept: previous versions list "
                             f"those snapshots, not the agent's (in {value})")
    notes += [i.describe() for i in conf.includes if i.worth_a_note]
    changes = [Change(p, conf.original(p), conf.text(p), why.get(p, [])) for p in conf.changed()]
    return changes, notes, restart


def dcerpcd_unit(opts: SetupOptions) -> str:
    helpers = sorted(p.name for p in at(opts.root, RPCD_DIR).glob("rpcd_*")
                     if p.name != "rpcd_fsrvp")
    if not helpers:
        raise SetupError(f"no rpcd_* helpers in {RPCD_DIR}: install samba first")
    args = " \\\n    ".join(f"{RPCD_DIR}/{h}" for h in helpers)
    return (
        "# Written by remotevss setup samba: Samba's RPC services without rpcd_fsrvp,\n"
        "# which remotevss-agent serves instead (\\pipe\\FssagentRpc).\n"
        "[Unit]\n"
        "Description=Samba RPC daemon (without rpcd_fsrvp: remotevss serves FSRVP)\n"
        "After=network.target winbind.service\n"
        "Before=smbd.service\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={RPCD_DIR}/samba-dcerpcd -s {opts.smb_conf} -F --no-process-group \\\n"
        f"    {args}\n"
        "Restart=on-failure\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def agent_unit(opts: SetupOptions) -> str:
    from remotevss.agent.admin_cli import unit_text

    text = unit_text(opts.executable or None)
    text = text.replace("--config /etc/remotevss/agent.toml", f"--config {opts.agent_config}")
    lines = text.splitlines()
    # After= both, as the plan and docs/samba.md promise: winbindd checks the first
    # NTLM bind; samba-dcerpcd serves Samba's other pipes in the same np/ directory.
    needs = {"After=": ("winbind.service", "samba-dcerpcd.service"),
             "Wants=": ("winbind.service",)}
    for i, line in enumerate(lines):
        for prefix, units in needs.items():
            if line.startswith(prefix):
                have = line[len(prefix):].split()
                lines[i] = prefix + " ".join([*have, *(u for u in units if u not in have)])
    return "\n".join(lines) + "\n"


def agent_toml(opts: SetupOptions) -> str:
    return (
        "# Written by remotevss setup samba (docs/configuration.md has every key).\n"
        "[agent]\n"
        "# exact @GMT- names: Samba's shadow_copy2 lists snapshots as previous versions\n"
        'snapshot_names = "gmt"\n\n'
        "[samba]\n"
        f'config_file = "{opts.smb_conf}"\n'
    )


def agent_toml_additions(opts: SetupOptions, old: str) -> tuple[str, list[str], list[str]]:
    """(text, why, notes): an existing agent TOML with the keys setup needs added.

    Why add instead of keeping the file untouched: without ``[samba] config_file``
    the agent serves no pipe, and doctor's fix (this command) would find nothing
    to do.  Only missing keys are inserted as lines (the admin's values, comments
    and order stay); a key the admin set otherwise is left and named in a note."""
    try:
        data = tomllib.loads(old)
    except tomllib.TOMLDecodeError as exc:
        raise SetupError(f"{opts.agent_config} is not valid TOML ({exc}): fix it or move "
                         f"it away, then run again") from exc
    wanted = (
        ("agent", "snapshot_names", "gmt", "exact @GMT- names that shadow_copy2 maps"),
        ("samba", "config_file", opts.smb_conf, "the agent serves Samba's pipe and shares"),
    )
    lines = old.splitlines()
    why: list[str] = []
    notes: list[str] = []
    for table, key, value, reason in wanted:
        have = data.get(table, {})
        line = f"{key} = {json.dumps(value)}"
        if isinstance(have, dict) and key in have:
            if have[key] != value:
                notes.append(f"{opts.agent_config}: [{table}] {key} = {have[key]!r} kept "
                             f"(setup would write {line}: {reason})")
            continue
        header = re.compile(rf"^\s*\[\s*{table}\s*\]\s*(#.*)?$")
        at_line = next((i for i, text in enumerate(lines) if header.match(text)), None)
        if at_line is not None:
            lines.insert(at_line + 1, line)
        elif table not in data:
            lines += ["", f"[{table}]", line]
        else:  # a dotted-key or inline table: no header to put the line under
            notes.append(f"{opts.agent_config}: add {line} to [{table}] ({reason})")
            continue
        why.append(f"[{table}] {line} added: {reason}")
    text = "\n".join(lines) + "\n" if why else old
    return text, why, notes


def plan(opts: SetupOptions) -> Plan:
    changes, notes, smbd_restart = _smb_conf_changes(opts)
    units = {
        f"{SYSTEMD_DIR}/samba-dcerpcd.service": (
            dcerpcd_unit(opts), ["samba-dcerpcd with -s and every rpcd_* helper but rpcd_fsrvp"]),
        f"{SYSTEMD_DIR}/remotevss-agent.service": (
            agent_unit(opts), ["the agent: after winbind and samba-dcerpcd, before smbd"]),
    }
    for path, (text, why) in units.items():
        old = _read(file_at(opts.root, path))
        if old != text:
            changes.append(Change(path, old, text, why))
    old_toml = _read(file_at(opts.root, opts.agent_config))
    if old_toml is None:
        changes.append(Change(opts.agent_config, None, agent_toml(opts),
                              ["the agent's configuration: Samba's shares, @GMT- names"]))
    else:
        new_toml, why, toml_notes = agent_toml_additions(opts, old_toml)
        notes += toml_notes
        if new_toml != old_toml:
            changes.append(Change(opts.agent_config, old_toml, new_toml,
                                  [*why, "every other line of the file is kept"]))
    winbind = f"{DEBIAN_UNITS}/winbind.service"
    if not at(opts.root, winbind).exists():
        raise SetupError("winbind is not installed (apt-get install winbind): the agent checks "
                         "NTLM binds with ntlm_auth, which needs winbindd")
    for unit, target in (("winbind.service", winbind),
                         ("samba-dcerpcd.service", f"{SYSTEMD_DIR}/samba-dcerpcd.service"),
                         ("remotevss-agent.service", f"{SYSTEMD_DIR}/remotevss-agent.service")):
        path = f"{SYSTEMD_DIR}/multi-user.target.wants/{unit}"
        if _link(at(opts.root, path)) != target:
            changes.append(Change(path, _link(at(opts.root, path)), target,
                                  [f"enable {unit} at boot"], link=True))
    return Plan(opts.root, changes, notes, smbd_restart)


# ------------------------------------------------------------------ apply / undo


def apply(p: Plan) -> Path:
    """Carry out ``p``; the first setup's originals are kept for --undo. Returns the record."""
    record_dir = at(p.root, UNDO_DIR)
    record_file = record_dir / "record.json"
    record: dict[str, Any] = json.loads(record_file.read_text()) if record_file.exists() else {
        "made": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "files": {}}
    new_dirs = _missing_dirs(p.root, [UNDO_DIR + "/record.json"])
    for made in reversed([record_dir, *record_dir.parents]):  # the agent's state_dir
        if not made.exists():  # among them: 0700 as the agent (and the unit) make it
            made.mkdir(mode=0o700)
    files: dict[str, Any] = record["files"]
    dirs: list[str] = record.setdefault("dirs", [])
    for d in [*new_dirs, *_missing_dirs(p.root, [c.path for c in p.changes])]:
        if d not in dirs:  # made by setup: --undo removes it again when empty
            dirs.append(d)
    for c in p.changes:
        if c.path not in files:  # the state before remotevss touched it
            files[c.path] = {"old": c.old, "link": c.link}
        files[c.path]["written"] = c.new  # what --undo expects to find
    tmp = record_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_file)
    for c in p.changes:
        _write(at(p.root, c.path) if c.link else file_at(p.root, c.path), c.new, c.link)
    return record_file


def agent_holdings(root: Path, agent_config: str) -> tuple[list[str], str]:
    """(what a running agent still holds, '' or why it could not be asked).

    Why ask before --undo: undo takes away the pipe, registry shares and the unit,
    so a set the agent still holds (snapshots, an exposed share@{GUID}) would be
    left behind with no agent to release it.  No agent answering: nothing held."""
    from remotevss.agent import admin
    from remotevss.agent.config import AgentConfig

    try:
        data = tomllib.loads(_read(file_at(root, agent_config)) or "")
    except tomllib.TOMLDecodeError:
        data = {}
    agent = data.get("agent", {}) if isinstance(data.get("agent"), dict) else {}
    cfg = AgentConfig(socket_path=str(agent.get("socket", AgentConfig.socket_path)),
                      admin_socket=str(agent.get("admin_socket", "")), netbios_name="-")
    sock = str(at(root, cfg.admin_socket_path))
    try:
        st = admin.request(sock, "status", timeout=10)
    except admin.AgentUnreachable:
        return [], ""
    except (admin.AdminError, admin.AdminPermissionDenied, OSError, ValueError) as exc:
        return [], f"could not ask the agent on {sock} what it holds: {exc}"
    held = [f"shadow copy set {s.get('id')} ({s.get('status')})" for s in st.get("sets") or []]
    if not held and st.get("exposed_shares"):
        held.append(f"{len(st['exposed_shares'])} exposed snapshot share(s)")
    return held, ""


def _missing_dirs(root: Path, paths: list[str]) -> list[str]:
    """The directories (as on the target) that writing ``paths`` would create."""
    out: list[str] = []
    for path in paths:
        for parent in Path(path).parents:
            if at(root, str(parent)).exists():
                break
            if str(parent) not in out:
                out.append(str(parent))
    return out


def _record(root: Path) -> dict[str, Any]:
    record_file = at(root, UNDO_DIR) / "record.json"
    if not record_file.exists():
        raise SetupError(f"nothing to undo: no {UNDO_DIR}/record.json")
    record: dict[str, Any] = json.loads(record_file.read_text())
    return record


def later_edits(root: Path) -> list[str]:
    """What --undo would lose: a diff for every file edited since setup wrote it.

    Why: undo puts back the file as it was before setup, so a share added to
    smb.conf afterwards would silently go with it."""
    out: list[str] = []
    for path, entry in _record(root)["files"].items():
        if "written" not in entry:  # a record from before setup kept this
            continue
        now = _link(at(root, path)) if entry["link"] else _read(file_at(root, path))
        if now == entry["written"]:
            continue
        if entry["link"] or now is None or entry["written"] is None:
            out.append(f"{path}: {'removed' if now is None else 'changed'} since setup")
            continue
        diff = difflib.unified_diff(entry["written"].splitlines(), now.splitlines(),
                                    f"{path} (as setup wrote it)", f"{path} (now)",
                                    lineterm="", n=0)
        out += [f"{path}: changed since setup; --undo loses:",
                *(f"    | {d}" for d in diff)]
    return out


def undo(root: Path) -> list[tuple[str, str]]:
    """Put every file the setup changed back as it was, remove the directories it
    made once empty; return (verb, path) for each file."""
    record = _record(root)
    done = []
    for path, entry in record["files"].items():
        link = bool(entry["link"])
        _write(at(root, path) if link else file_at(root, path), entry["old"], link)
        done.append(("removed" if entry["old"] is None else "restored", path))
    (at(root, UNDO_DIR) / "record.json").unlink()
    for d in sorted(record.get("dirs", []), key=len, reverse=True):  # deepest first
        with contextlib.suppress(OSError):  # not empty (agent state, admin files) or gone
            at(root, d).rmdir()
    return done


def _write(path: Path, content: str | None, link: bool) -> None:
    if content is None:
        if path.is_symlink() or path.exists():
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if link:
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(content, path)
        return
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    tmp = path.with_name(f".{path.name}.remotevss-tmp")
    tmp.write_text(content, errors=ERRORS)
    os.chmod(tmp, mode)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def systemd_running(root: Path) -> bool:
    return root == Path("/") and Path("/run/systemd/system").is_dir() and bool(
        shutil.which("systemctl"))
