"""``remotevss status``, ``remotevss storage list|resize``, ``remotevss gc``, the unit file.

They talk to the running agent over its admin socket (agent/admin.py).
``storage`` also works with the agent stopped: it then reads the journal and
writes the limits file itself (the agent reads that file at every check).
Exit codes of ``status`` (for monitoring): 0 healthy, 1 unhealthy, 3 no
agent answers, 4 permission denied on the admin socket (the agent may well be
up: not root, not in ``socket_group``); 2 is a usage or configuration error,
as everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remotevss.agent import admin
from remotevss.agent.config import AgentConfig, ConfigError, load_config
from remotevss.agent.sizes import human

if TYPE_CHECKING:
    from remotevss.agent.storage import ShareVolume
    from remotevss.fsrvp.machine import Machine

DEFAULT_CONFIG = "/etc/remotevss/agent.toml"
EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED = 0, 1, 2, 3, 4


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"the agent's configuration (default {DEFAULT_CONFIG} "
                                    "if it exists)")
    p.add_argument("--socket", help="the agent's FSRVP socket (admin socket: <socket>.admin)")
    p.add_argument("--admin-socket", help="the admin socket itself")


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("status", help="health of the running agent (exit 1 when unhealthy)")
    _where(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")

    st = sub.add_parser("storage", help="shadow storage per volume (like vssadmin)")
    ssub = st.add_subparsers(dest="storage_command", required=True)
    sl = ssub.add_parser("list", help="used / allocated / maximum per volume")
    _where(sl)
    sl.add_argument("--json", action="store_true")
    sr = ssub.add_parser("resize", help="set a volume's shadow storage maximum")
    _where(sr)
    sr.add_argument("volume", help="share name, a path in a share, a volume holding one, "
                                   "or backend:root")
    sr.add_argument("--max", required=True, metavar="SIZE",
                    help="bytes with a unit (10G, 512MiB), PERCENT%% of the filesystem, "
                         "or unbounded")

    sets = sub.add_parser("sets", help="the shadow copy sets the agent holds; delete one (root)")
    setsub = sets.add_subparsers(dest="sets_command", required=True)
    ls = setsub.add_parser("list", help="every set with its copies and snapshot shares")
    _where(ls)
    ls.add_argument("--json", action="store_true")
    rm = setsub.add_parser("delete", help="delete a set (or one copy): its snapshot shares "
                                          "and snapshots go (root)")
    _where(rm)
    rm.add_argument("set_id", metavar="SET_ID")
    rm.add_argument("--copy", metavar="COPY_ID", help="only this shadow copy of the set")

    g = sub.add_parser("gc", help="run an orphan collection pass now (root)")
    _where(g)
    g.add_argument("--json", action="store_true")


def _config(args: argparse.Namespace) -> AgentConfig:
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    return load_config(path, socket_path=args.socket)


def _admin_path(args: argparse.Namespace, config: AgentConfig) -> str:
    return str(args.admin_socket or config.admin_socket_path)


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"remotevss: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = _admin_path(args, config)
    try:
        if args.command == "status":
            return _status(path, args.json)
        if args.command == "sets":
            return _sets(path, args)
        if args.command == "gc":
            done = admin.request(path, "gc", timeout=600)
            _out(done, args.json, _gc_text)
            return 0
        if args.storage_command == "list":
            return _storage_list(path, config, args.json)
        return _storage_resize(path, config, args.volume, args.max)
    except admin.AdminError as exc:
        print(f"remotevss: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except admin.AgentUnreachable as exc:
        print(f"remotevss: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except admin.AdminPermissionDenied as exc:
        print(f"remotevss: {exc}", file=sys.stderr)
        return EXIT_DENIED


def _out(result: Any, as_json: bool, text: Any) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        text(result)


def _gc_text(done: list[dict[str, Any]]) -> None:
    if not done:
        print("nothing to collect")
    for d in done:
        what = f"copy {d['copy']} of set {d['set']}" if d["copy"] else f"set {d['set']}"
        print(f"deleted {what}: {d['reason']}: {d['detail']}")


# ------------------------------------------------------------------ sets


def _sets(path: str, args: argparse.Namespace) -> int:
    if args.sets_command == "delete":
        done = admin.request(path, "release", timeout=600, set=args.set_id, copy=args.copy)
        for d in done:
            what = f"shadow copy {d['copy']} of set {d['set']}" if d["copy"] else f"set {d['set']}"
            print(f"deleted {what}{' (stray)' if d.get('stray') else ''}")
        return 0
    st = admin.request(path, "status", timeout=10)
    _out(st.get("sets", []) + stray_sets(st.get("strays", [])), args.json, _sets_text)
    return 0


def stray_sets(strays: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept strays (ZFS snapshots labelled by this agent, unknown to its journal),
    grouped by their set label, in the shape of a set with status "stray"."""
    by_set: dict[str, dict[str, Any]] = {}
    for x in strays:
        s = by_set.setdefault(x["set_id"], {
            "id": x["set_id"], "status": "stray", "context": None,
            "context_name": x["context"] or "?", "auto_release": not x["persistent"],
            "in_flight": False, "last_activity": None, "stray": True, "copies": []})
        s["copies"].append({"id": x["copy_id"], "volume": x["volume"], "snapshot": x["path"],
                            "zfs": x["zfs_name"], "held": x["held"], "created": None,
                            "writable": None, "shares": []})
    return list(by_set.values())


def _sets_text(sets: list[dict[str, Any]]) -> None:
    if not sets:
        print("no shadow copy sets")
    for s in sets:
        print(f"set {s['id']}  {s['status']}  {s['context_name']}"
              f"{'' if s['auto_release'] else ' (persistent)'}")
        if s.get("stray"):
            print("  in ZFS, labelled by this agent, not in its journal: kept; "
                  "'remotevss sets delete SET_ID' removes it")
        for c in s["copies"]:
            zfs = f"  [{c['zfs']}{', held' if c['held'] else ''}]" if c.get("zfs") else ""
            print(f"  copy {c['id']}  {c['volume']}  {c['snapshot'] or '(no snapshot yet)'}"
                  f"{zfs}")
            for m in c["shares"]:
                shown = m["exposed_name"] if m["exposed"] else "(not exposed)"
                print(f"    {m['share']} -> {shown}")


# ------------------------------------------------------------------ status


def _status(path: str, as_json: bool) -> int:
    try:
        st = admin.request(path, "status", timeout=10)
    except admin.AgentUnreachable as exc:
        if as_json:
            print(json.dumps({"healthy": False, "problems": [str(exc)], "reachable": False}))
        else:
            print(f"remotevss agent: UNREACHABLE: {exc}")
        return EXIT_UNREACHABLE
    except admin.AdminPermissionDenied as exc:  # the agent may be up: say so, not "down"
        if as_json:
            print(json.dumps({"healthy": None, "problems": [str(exc)], "reachable": None,
                              "permission_denied": True}))
        else:
            print(f"remotevss agent: PERMISSION DENIED: {exc}")
        return EXIT_DENIED
    _out(st, as_json, _status_text)
    return EXIT_HEALTHY if st.get("healthy") else EXIT_UNHEALTHY


def _ago(t: float | None) -> str:
    return "never" if t is None else f"{time.time() - t:.0f} s ago"


def _status_text(st: dict[str, Any]) -> None:
    a = st["agent"]
    print(f"remotevss agent: {'healthy' if st['healthy'] else 'UNHEALTHY'}")
    print(f"  pid {a['pid']}, version {a['version']}, up {a['uptime_s']:.0f} s, mode {a['mode']}, "
          f"{a['reloads']} reload(s)")
    print(f"  FSRVP socket {a['socket']}; sequence timeout "
          f"{'spec' if a['sequence_timeout'] is None else a['sequence_timeout']}")
    if (pipe := st.get("samba_pipe")) is not None:
        state = "ours" if pipe["owned"] else f"NOT OURS ({pipe['problem']})"
        print(f"  Samba pipe {pipe['path']}: {state}, checked {_ago(pipe['last_check'])}")
    ctx = st["context"]
    held = f"held by {ctx['client']} ({ctx['context']})" if ctx["set"] else "free"
    print(f"  context: {held}")
    if st["timer_remaining_s"] is not None:
        print(f"  sequence timer: fires in {st['timer_remaining_s']:.0f} s")
    print(f"  sets: {len(st['sets'])}")
    for s in st["sets"]:
        flags = "in flight" if s["in_flight"] else "finished"
        kind = "auto-release" if s["auto_release"] else "persistent"
        print(f"    {s['id']} {s['status']} {s['context_name']} {kind}, {flags}, "
              f"last call {_ago(s['last_activity'])}")
        for c in s["copies"]:
            shares = ", ".join(m["exposed_name"] for m in c["shares"] if m["exposed"]) or "-"
            print(f"      copy {c['id']} {c['volume']} {c['snapshot'] or '(no snapshot)'} "
                  f"shares: {shares}")
    for x in st.get("strays", []):
        print(f"    stray {x['zfs_name']} (set {x['set_id']}, {x['context'] or '?'}"
              f"{', held' if x['held'] else ''}): kept, not in the journal")
    print(f"  exposed shares: {len(st['exposed_shares'])}")
    _volumes_text(st["volumes"], indent="  ")
    gc = st["gc"]
    print(f"  gc: {gc['passes']} pass(es), last {_ago(gc['last_pass'])}, deleted {gc['deleted']}")
    for p in st["problems"]:
        print(f"  PROBLEM: {p}")


# ------------------------------------------------------------------ storage


def _volumes_text(volumes: list[dict[str, Any]], indent: str = "") -> None:
    if not volumes:
        print(f"{indent}volumes: none measured yet")
        return
    print(f"{indent}{'volume':<32} {'backend':<8} {'used':>11} {'allocated':>11} "
          f"{'maximum':>11} {'fs size':>11} copies basis")
    for v in volumes:
        maximum = "unbounded" if v["maximum"] is None else f"{human(v['maximum'])}"
        if v["limit"].endswith("%"):
            maximum += f" ({v['limit']})"
        flag = "  OVER" if v.get("over") else ""
        print(f"{indent}{v['root']:<32} {v['backend']:<8} {human(v['used']):>11} "
              f"{human(v['allocated']):>11} {maximum:>11} {human(v['size']):>11} "
              f"{v['copies']:>6} {v['basis']}{flag}")
        if v["note"]:
            print(f"{indent}  ({v['note']})")
        if n := v.get("strays"):
            size = "size unknown" if v["stray_bytes"] is None else human(v["stray_bytes"])
            print(f"{indent}  ({n} stray cop{'y' if n == 1 else 'ies'} kept, not in the "
                  f"journal, {size}: remotevss sets list)")


def _storage_list(path: str, config: AgentConfig, as_json: bool) -> int:
    try:
        volumes = admin.request(path, "storage", timeout=600)
    except admin.AgentUnreachable:
        volumes = _offline_usage(config)
    _out(volumes, as_json, _volumes_text)
    return 0


def _journal_machine(config: AgentConfig) -> Machine:
    """The sets in the journal of a stopped agent."""
    from remotevss.agent.journal import Journal
    from remotevss.fsrvp.machine import Machine

    sets = []
    if config.journal_path.exists():
        j = Journal(config.journal_path)
        try:
            sets = j.load_sets()
        finally:
            j.close()
    m = Machine()
    m.load(sets)
    return m


def _served_offline(config: AgentConfig) -> list[ShareVolume]:
    """The shares a stopped agent would serve (Samba's behind Samba), with volumes."""
    from remotevss.agent.samba_components import served_shares
    from remotevss.agent.storage import share_volumes
    from remotevss.samba.conf import SambaConfigError

    try:
        return share_volumes(served_shares(config), config.backend)
    except SambaConfigError as exc:
        raise admin.AdminError(f"Samba's shares: {exc}") from exc


def _offline_usage(config: AgentConfig) -> list[dict[str, Any]]:
    """The agent is not running: measure from its journal and configuration."""
    from remotevss.agent.storage import StorageManager, copy_refs

    volumes = [v.volume for v in _served_offline(config) if v.volume is not None]
    usage = StorageManager(config).measure(copy_refs(_journal_machine(config)), volumes)
    return [u.as_dict() for u in usage.values()]


def _storage_resize(path: str, config: AgentConfig, volume: str, size: str) -> int:
    try:
        res = admin.request(path, "resize", volume=volume, max=size)
    except admin.AgentUnreachable:
        from remotevss.agent.storage import StorageManager, resolve_volume_root, split_volume

        held = {split_volume(c.volume_name)[1]
                for s in _journal_machine(config).sets.values() for c in s.copies}
        try:
            root = resolve_volume_root(volume, _served_offline(config), held)
            res = {"volume": root, "max": str(StorageManager(config).set_limit(root, size))}
        except ValueError as exc:
            raise admin.AdminError(str(exc)) from exc
        print("(agent not running: limit stored for its next start)", file=sys.stderr)
    print(f"shadow storage maximum of {res['volume']}: {res['max']}")
    return 0


# ------------------------------------------------------------------ systemd unit


def unit_text(executable: str | None = None, config: str | None = None) -> str:
    """The shipped unit file, with ExecStart running this installation's agent with
    ``config`` (made absolute: systemd starts the agent in /; default
    /etc/remotevss/agent.toml)."""
    exe = executable or _this_installation()
    text = resources.files("remotevss").joinpath("data/remotevss-agent.service").read_text()
    text = text.replace("@REMOTEVSS@", exe)
    if config is not None:
        path = str(Path(config).absolute())
        if any(ch.isspace() or ch in "\\\"'%$" for ch in path):
            raise ValueError(f"config path {path!r}: spaces, quotes, % and $ do not fit a unit")
        text = text.replace("--config /etc/remotevss/agent.toml", f"--config {path}")
    return text


def _this_installation() -> str:
    """``remotevss`` on PATH, else the console script beside this interpreter, else
    ``python -m remotevss.cli`` (never sys.argv[0]: under ``-m`` that is a .py file)."""
    beside = str(Path(sys.executable).parent)
    found = shutil.which("remotevss") or shutil.which("remotevss", path=beside)
    return found or f"{sys.executable} -m remotevss.cli"
