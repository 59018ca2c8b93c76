"""`remotevss setup samba` and `remotevss doctor`: the arguments and the output.

Exit status of setup: 0 done (or nothing to do, or shown without --yes),
2 the machine's configuration does not allow it (nothing changed).
Exit status of doctor: see :mod:`remotevss.setup.doctor`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from remotevss.agent.admin_cli import DEFAULT_CONFIG
from remotevss.setup.smbconf_text import shown

EXIT_REFUSED = 2


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("setup", help="set up the machine's own Samba for the agent (root)")
    ssub = s.add_subparsers(dest="setup_command", required=True)
    sm = ssub.add_parser(
        "samba", help="smb.conf, samba-dcerpcd without rpcd_fsrvp, winbind, the agent's "
                      "config and unit: shown, applied with --yes, undone with --undo")
    sm.add_argument("--yes", action="store_true", help="apply the changes (default: show them)")
    sm.add_argument("--undo", action="store_true",
                    help="put back every file as it was before the first setup")
    sm.add_argument("--force", action="store_true",
                    help="--undo even while the agent holds shadow copy sets or files "
                         "were edited after setup")
    sm.add_argument("--smb-conf", default="/etc/samba/smb.conf")
    sm.add_argument("--config", default=DEFAULT_CONFIG, help="the agent's TOML file to write")
    sm.add_argument("--share", action="append", default=[], metavar="NAME",
                    help="give this share previous versions (repeatable; default: every share "
                         "on btrfs, ZFS or reflink XFS)")
    sm.add_argument("--root", default="/", help="install into this directory as if it were / "
                                                "(images, tests); nothing is started")
    sm.add_argument("--no-start", action="store_true",
                    help="write the files, start or restart nothing")

    d = sub.add_parser("doctor", help="check every prerequisite of the agent behind Samba; "
                                      "exit 0 ok, 1 a check failed, 2 unreadable configuration")
    d.add_argument("--config", help=f"the agent's configuration (default {DEFAULT_CONFIG} "
                                    "if it exists)")
    d.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        return _doctor(args)
    return _setup_samba(args)


def _doctor(args: argparse.Namespace) -> int:
    from remotevss.setup.doctor import render, run_checks

    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    checks, rc = run_checks(path)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        sys.stdout.write(render(checks))
    return rc


def _setup_samba(args: argparse.Namespace) -> int:
    from remotevss.setup import samba_setup as ss

    root = Path(args.root)
    try:
        if args.undo:
            return _undo(args, root)
        opts = ss.SetupOptions(root=root, smb_conf=args.smb_conf, agent_config=args.config,
                               shares=tuple(args.share),
                               executable=_executable())
        plan = ss.plan(opts)
    except ss.SetupError as exc:
        print(f"remotevss setup: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.write(plan.describe())
    if not plan.changes:
        return 0
    if not args.yes:
        print("(nothing changed: run again with --yes to apply)")
        return 0
    record = ss.apply(plan)
    print(f"applied; the files as they were are kept for --undo ({record})")
    commands = _start_commands(plan, opts)
    restart_agent = ["restart", "remotevss-agent"]
    if restart_agent in commands and not args.no_start and ss.systemd_running(root):
        held, _ = ss.agent_holdings(root, opts.agent_config)
        if held:  # a restart releases unfinished sets: the backup that holds them fails
            commands.remove(restart_agent)
            print(f"remotevss-agent not restarted: it holds {'; '.join(held)} (stopping it "
                  f"releases unfinished sets); once they are done: systemctl restart "
                  f"remotevss-agent", file=sys.stderr)
    _systemctl(root, args.no_start, commands)
    return 0


def _start_commands(plan: Any, opts: Any) -> list[list[str]]:
    """What makes the daemons run with the files ``plan`` wrote, restarting only those
    whose files changed: a run after an upgrade that changes the agent's unit or TOML,
    or one that gives a share previous versions, must not restart smbd, which would
    drop every user's session and open files (a reload serves new tree connects with
    the new smb.conf).  ``start`` of a running unit changes nothing; a new one starts."""
    from remotevss.setup import samba_setup as ss

    agent_files = {f"{ss.SYSTEMD_DIR}/remotevss-agent.service", opts.agent_config}
    dcerpcd_unit = f"{ss.SYSTEMD_DIR}/samba-dcerpcd.service"
    samba = any(not c.link and c.path not in {*agent_files, dcerpcd_unit}
                for c in plan.changes)  # smb.conf or a file it includes
    changed = {c.path for c in plan.changes}

    def verb(restart: bool) -> str:
        return "restart" if restart else "start"

    out = [["daemon-reload"], ["enable", "--now", "winbind"]]
    if plan.smbd_restart:  # Stopped first: a running smbd's on-demand samba-dcerpcd
        # (Samba's, with rpcd_fsrvp) makes ours exit 1 at once, and Restart=on-failure
        # every 100 ms reaches systemd's start limit before a later restart of smbd ends it.
        out.append(["stop", "smbd"])
    out += [[verb(plan.smbd_restart or dcerpcd_unit in changed), "samba-dcerpcd"],
            [verb(bool(changed & agent_files)), "remotevss-agent"]]
    if plan.smbd_restart:
        out.append(["start", "smbd"])
    elif samba:
        out.append(["reload", "smbd"])
    return out


def _undo(args: argparse.Namespace, root: Path) -> int:
    """Put the files back; refuse (without --force) while the agent holds sets, which
    would be left with no agent, pipe or registry share to release them."""
    from remotevss.setup import samba_setup as ss

    lost = [shown(x) for x in ss.later_edits(root)]
    if lost and not args.force:
        raise ss.SetupError("\n".join([
            "files were edited after setup; --undo puts back the versions from before "
            "setup and would lose these edits (--force: undo anyway):", *lost]))
    if lost:
        print("\n".join(["warning: edits made after setup are lost (--force):", *lost]),
              file=sys.stderr)
    held, unknown = ss.agent_holdings(root, args.config)
    if unknown:
        print(f"warning: {unknown}", file=sys.stderr)
    if held:
        what = "; ".join(held)
        if not args.force:
            raise ss.SetupError(
                f"the agent still holds {what}: let the backup finish, or drop them "
                f"(remotevss sets list, remotevss sets delete SET_ID), then run --undo again "
                f"(--force: undo anyway; stopping the agent releases unfinished sets, "
                f"persistent ones stay on disk)")
        print(f"warning: the agent still holds {what} (--force)", file=sys.stderr)
    stop = [["stop", "remotevss-agent"], ["stop", "samba-dcerpcd"]]
    live = not args.no_start and ss.systemd_running(root)
    if live:
        _systemctl(root, False, stop, "")
    for verb, path in ss.undo(root):
        print(f"{verb} {path}")
    _systemctl(root, args.no_start, [["daemon-reload"], ["restart", "smbd"]],
               "stop order: remotevss-agent (it releases unfinished sets), the samba-dcerpcd "
               "setup wrote, then restart smbd (it starts Samba's own samba-dcerpcd on "
               "demand again); winbind may keep running")
    return 0


def _executable() -> str:
    """The remotevss program of this installation, for the unit's ExecStart: the one
    beside this Python (a virtualenv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "remotevss"
    if beside.exists():
        return str(beside)
    return shutil.which("remotevss") or str(beside)


START_ADVICE = ("start order: stop smbd (its on-demand samba-dcerpcd keeps ours from starting), "
                "start winbind, samba-dcerpcd, remotevss-agent, then start smbd")


def _systemctl(root: Path, no_start: bool, commands: list[list[str]],
               advice: str = START_ADVICE) -> None:
    """Run ``commands`` under a live systemd, else print ``advice`` (what to do by hand)."""
    from remotevss.setup.samba_setup import systemd_running

    if no_start or not systemd_running(root):
        if advice:
            print(advice + ("" if no_start else
                            " (systemd is not running here: nothing was started or stopped)"))
        return
    for argv in commands:
        print("systemctl " + " ".join(argv))
        subprocess.run(["systemctl", *argv], check=False)
