"""The operations layer's pure parts: sizes, config sections, GC and shutdown rules,
sd_notify, event lines, the unit file."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

from remotevss.agent.admin_cli import unit_text
from remotevss.agent.authz import Caller
from remotevss.agent.config import ConfigError, GcConfig, load_config
from remotevss.agent.events import CallEvent, JsonFormatter
from remotevss.agent.gc import Activity, plan_gc
from remotevss.agent.release import Pick, release_picks, shutdown_outcome
from remotevss.agent.sdnotify import notify, watchdog_interval
from remotevss.agent.sizes import SizeLimit, parse_limit
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import (
    CTX_APP_ROLLBACK,
    CTX_BACKUP,
    CTX_NAS_ROLLBACK,
    Attr,
    HResult,
    Opnum,
)
from remotevss.fsrvp.machine import (
    DeleteSnapshot,
    Machine,
    MappedShare,
    SealSnapshot,
    ShadowCopy,
    ShadowCopySet,
    Status,
    UnexposeShare,
)

DAY = 86400.0


# ------------------------------------------------------------------ sizes


@pytest.mark.parametrize(("text", "expected"), [
    ("10G", SizeLimit(size=10 << 30)),
    ("512MiB", SizeLimit(size=512 << 20)),
    ("1.5k", SizeLimit(size=1536)),
    (4096, SizeLimit(size=4096)),
    ("20%", SizeLimit(percent=20.0)),
    ("UNBOUNDED", SizeLimit()),
])
def test_parse_limit(text: str | int, expected: SizeLimit) -> None:
    assert parse_limit(text) == expected
    assert parse_limit(str(expected)) == expected  # round-trips through storage-limits.json


@pytest.mark.parametrize("bad", ["lots", "10X", "0%", "150%", "-5", -1, True])
def test_parse_limit_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_limit(bad)


def test_percent_resolves_against_filesystem() -> None:
    assert parse_limit("25%").resolve(1000) == 250
    assert parse_limit("unbounded").resolve(1000) is None


# ------------------------------------------------------------------ config


def _load(tmp_path: Path, text: str) -> object:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return load_config(p)


def test_ops_sections_load(tmp_path: Path) -> None:
    c = load_config(None)
    assert c.gc == GcConfig() and c.gc.max_age == DAY and c.storage.max == "unbounded"
    assert c.metrics.port == 0 and c.metrics.address == "127.0.0.1"
    assert c.admin_socket_path == c.socket_path + ".admin"
    p = tmp_path / "agent.toml"
    p.write_text('[gc]\ninterval = 60\n[gc.max_age_by_context]\nnas_rollback = 0\n'
                 '[storage]\nmax = "20%"\npolicy = "refuse"\n[log]\nformat = "json"\n'
                 'level = "INFO"\ntrace = true\n[metrics]\nport = 9469\n')
    c = load_config(p)
    assert c.gc.interval == 60 and c.gc.max_age_for("nas_rollback") == 0
    assert c.gc.max_age_for("backup") == DAY
    assert (c.storage.max, c.storage.policy) == ("20%", "refuse")
    assert (c.log.format, c.log.level, c.log.trace) == ("json", "info", True)
    assert c.metrics.port == 9469


@pytest.mark.parametrize(("text", "message"), [
    ("[gc]\nintervall = 5\n", "[gc] unknown key"),
    ("[gc]\nmax_age = -1\n", "max_age"),
    ("[gc.max_age_by_context]\nbackups = 5\n", "unknown key"),
    ('[storage]\nmax = "plenty"\n', "[storage] max"),
    ('[storage]\npolicy = "panic"\n', "policy"),
    ('[log]\nformat = "xml"\n', "format"),
    ('[log]\ntrace = "yes"\n', "trace"),
    ("[metrics]\nport = 70000\n", "port"),
    ("[metricz]\n", "unknown section"),
    # nan and inf are TOML floats: a nan deadline never fires, inf never comes
    ("[agent]\nsequence_timeout = nan\n", "sequence_timeout must be a finite"),
    ("[agent]\nsequence_timeout = inf\n", "sequence_timeout must be a finite"),
    ("[gc]\ninterval = inf\n", "[gc] interval must be a finite"),
    ("[gc]\norphan_after = nan\n", "[gc] orphan_after must be a finite"),
    ("[gc.max_age_by_context]\nbackup = inf\n", "backup must be a finite"),
    ("[rpc_auth]\ntimeout = nan\n", "[rpc_auth] timeout must be a finite"),
    ("[rpc_auth]\nhelper_idle = -inf\n", "[rpc_auth] helper_idle must be a finite"),
    ("[storage]\nmax = inf\n", "[storage] max must be a string"),
    ('[agent]\nsocket_group = "nosuchgroup"\n', "socket_group: unknown unix group"),
])
def test_ops_sections_validated(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _load(tmp_path, text)


@pytest.mark.parametrize("override", [
    {"sequence_timeout": float("nan")}, {"sequence_timeout": float("inf")},
    {"socket_group": "nosuchgrp"},
])
def test_command_line_overrides_validated(override: dict[str, object]) -> None:
    """``--sequence-timeout nan`` (argparse's float() takes it), ``--socket-group``."""
    with pytest.raises(ConfigError):
        load_config(None, **override)


# ------------------------------------------------------------------ GC rules


def _set(status: Status, context: int, created: float, *, exposed: bool = True,
         writable: bool = False) -> ShadowCopySet:
    cid = uuid.uuid4()
    mapping = MappedShare("\\\\fs\\data\\", "data", f"data@{{{cid}}}" if exposed else "", exposed)
    copy = ShadowCopy(cid, "btrfs:/srv", created, [mapping], f"/srv/.snapshots/{cid}", writable)
    return ShadowCopySet(uuid.uuid4(), status, context, [copy])


def _machine(*sets: ShadowCopySet) -> Machine:
    m = Machine()
    m.load(sets)
    return m


def test_plan_gc_orphans_and_ages(tmp_path: Path) -> None:
    now = 10 * DAY
    orphan = _set(Status.RECOVERED, CTX_BACKUP, now - 3600)  # auto-release, idle 1 h
    busy = _set(Status.EXPOSED, CTX_BACKUP, now - 3600)  # auto-release, called recently
    persistent = _set(Status.RECOVERED, CTX_APP_ROLLBACK, now - 3600)  # idle, but persistent
    old = _set(Status.RECOVERED, CTX_NAS_ROLLBACK, now - 2 * DAY)
    unfinished = _set(Status.ADDED, CTX_BACKUP, now - 5 * DAY)  # the timer's, not ours
    never_exposed = _set(Status.COMMITTED, CTX_APP_ROLLBACK, now - 3600, exposed=False)
    m = _machine(orphan, busy, persistent, old, unfinished, never_exposed)
    activity = Activity(tmp_path / "a.json", since=now - 3600)
    activity.last[busy.id] = now - 60
    policy = GcConfig(orphan_after=1800, max_age=DAY)
    picks = {(p.set_id, p.reason) for p in plan_gc(m, now, policy, activity)}
    assert picks == {(orphan.id, "orphan"), (old.id, "max_age"), (never_exposed.id, "orphan")}
    # per-context age: NAS rollback copies kept for ever
    policy = GcConfig(orphan_after=0, max_age=DAY, max_age_by_context=(("nas_rollback", 0.0),))
    assert plan_gc(m, now, policy, activity) == []
    # activity survives a restart through its file
    activity.save(m.sets)
    again = Activity(tmp_path / "a.json", since=now)
    assert again.of(busy.id) == now - 60 and again.of(orphan.id) == now


def test_release_picks_takes_copies_with_shares_and_snapshots() -> None:
    s = _set(Status.RECOVERED, CTX_BACKUP, 0)
    c2 = ShadowCopy(uuid.uuid4(), "btrfs:/vol2", 0, [MappedShare("\\\\fs\\b\\", "b")], "/v2/.s/x")
    s.copies.append(c2)
    m = _machine(s)
    done: list[Pick] = []
    out = release_picks(m, [Pick(s.id, c2.id, "storage", "")], done)
    assert out.teardown == [DeleteSnapshot(c2.id, "btrfs:/vol2", "/v2/.s/x")]
    assert s.id in m.sets and len(m.sets[s.id].copies) == 1 and out.dropped_sets == []
    c1 = s.copies[0]
    out = release_picks(m, [Pick(s.id, None, "orphan", ""), Pick(s.id, None, "orphan", "")], done)
    assert out.teardown == [UnexposeShare(c1.mappings[0].exposed_name),
                            DeleteSnapshot(c1.id, c1.volume_name, c1.snapshot_path)]
    assert out.dropped_sets == [s.id] and m.sets == {} and len(done) == 2  # 2nd pick: gone


def test_shutdown_releases_unfinished_keeps_recovered_and_persistent_exposed() -> None:
    recovered = _set(Status.RECOVERED, CTX_BACKUP, 0)
    exposed_auto = _set(Status.EXPOSED, CTX_BACKUP, 0)
    exposed_persistent = _set(Status.EXPOSED, CTX_APP_ROLLBACK | Attr.ATTR_AUTO_RECOVERY, 0,
                              writable=True)
    m = _machine(recovered, exposed_auto, exposed_persistent)
    m.context_set, m.deadline = True, 123.0
    done: list[Pick] = []
    out = shutdown_outcome(m, done)
    assert set(m.sets) == {recovered.id, exposed_persistent.id}
    assert m.sets[exposed_persistent.id].status is Status.RECOVERED
    c = exposed_persistent.copies[0]
    assert SealSnapshot(c.id, c.volume_name, c.snapshot_path) in out.teardown and not c.writable
    assert out.dropped_sets == [exposed_auto.id]
    assert not m.context_set and m.deadline is None
    assert {p.set_id for p in done} == {exposed_auto.id, exposed_persistent.id}


# ------------------------------------------------------------------ sd_notify


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        assert notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})
        assert s.recv(100) == b"READY=1\nSTATUS=ok"
    name = f"remotevss-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)  # abstract namespace, as systemd uses
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"WATCHDOG=1"
    assert not notify("READY=1", {})  # not under systemd: a no-op
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000",
                              "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert watchdog_interval({}) is None


# ------------------------------------------------------------------ event lines


def test_call_event_fields_and_json_formatter() -> None:
    sid = uuid.uuid4()
    caller = Caller(uid=0, address="10.0.0.5", name="CORP\\backup", transport="samba")
    ev = CallEvent(caller, Opnum.START_SHADOW_COPY_SET,
                   calls.StartShadowCopySetRequest(uuid.uuid4()),
                   calls.StartShadowCopySetResponse(sid, HResult.ZERO), b"", b"", 1.0, 0.0025)
    f = ev.fields()
    assert f["opnum"] == "START_SHADOW_COPY_SET" and f["set"] == str(sid)  # the server's id
    assert (f["caller"], f["client"], f["result"], f["duration_ms"]) == (
        "CORP\\backup", "10.0.0.5", "ZERO", 2.5)
    bad = CallEvent(caller, Opnum.COMMIT_SHADOW_COPY_SET,
                    calls.CommitShadowCopySetRequest(sid, 1000),
                    calls.CommitShadowCopySetResponse(HResult.VSS_E_INSUFFICIENT_STORAGE),
                    b"", b"", 1.0, 0.1)
    assert bad.fields()["result"] == "VSS_E_INSUFFICIENT_STORAGE"
    assert bad.fields()["hresult"] == "0x8004231F" and bad.fields()["set"] == str(sid)
    fault = CallEvent(caller, 99, None, None, b"x", b"", 1.0, 0.0, fault=0x1C010002)
    assert fault.fields()["result"] == "FAULT_0x1C010002" and fault.fields()["opnum"] == "OPNUM_99"

    rec = logging.LogRecord("remotevss.events", logging.INFO, __file__, 1, "%s", ("x",), None)
    rec.event_fields = f
    line = json.loads(JsonFormatter().format(rec))
    assert line["event"] == "fsrvp_call" and line["level"] == "info" and "msg" not in line
    plain = logging.LogRecord("remotevss.agent", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    assert json.loads(JsonFormatter().format(plain))["msg"] == "a b"


# ------------------------------------------------------------------ unit file


def test_unit_file() -> None:
    text = unit_text("/opt/remotevss/bin/remotevss")
    lines = set(text.splitlines())
    assert {"Type=notify", "NotifyAccess=main", "WatchdogSec=60",
            "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM"} <= lines
    assert ("ExecStart=/opt/remotevss/bin/remotevss agent --config /etc/remotevss/agent.toml "
            "--log-format json") in lines
    assert "@REMOTEVSS@" not in text and "[Install]" in lines


# What sets up a file system (mount) namespace for a unit's processes, per
# systemd.exec(5) of Debian 12's systemd 252: PrivateMounts= and every setting
# that works "in a fashion equivalent" to it (ProtectKernelModules= makes
# /usr/lib/modules inaccessible, ProtectKernelLogs= /proc/kmsg and /dev/kmsg,
# both "with the same restrictions regarding mount propagation" as ReadOnlyPaths=).
MOUNT_NAMESPACE_KEYS = {
    "PrivateMounts", "PrivateTmp", "PrivateDevices", "PrivateNetwork", "ProtectSystem",
    "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectProc", "ProcSubset", "ReadOnlyPaths", "ReadWritePaths",
    "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "BindPaths",
    "BindReadOnlyPaths", "RootDirectory", "RootImage", "MountImages", "ExtensionImages",
    "ExtensionDirectories", "MountAPIVFS", "MountFlags", "DynamicUser", "LogNamespace",
}


def test_unit_keeps_the_agent_in_the_hosts_mount_namespace() -> None:
    """The reflink and copy backends seal snapshots with read-only bind mounts and
    the zfs backend mounts clones (``zfs mount``, run by the agent): smbd, in the
    host's mount namespace, must see them.  In a unit namespace systemd turns off
    propagation from the service to the host, so smbd would serve a writable tree
    where the agent sealed one, and an empty directory for a ZFS clone."""
    service = unit_text("/opt/remotevss/bin/remotevss").split("[Service]", 1)[1]
    keys = {line.split("=", 1)[0] for line in service.splitlines()
            if "=" in line and not line.startswith("#")}
    assert not keys & MOUNT_NAMESPACE_KEYS, sorted(keys & MOUNT_NAMESPACE_KEYS)


def test_unit_lets_the_agent_open_devices() -> None:
    """The zfs backend runs ``zfs``, which opens /dev/zfs (OpenZFS).  Any DeviceAllow=
    turns systemd's default DevicePolicy=auto into an allow-list of it and the pseudo
    devices, and ProtectClock= implies DeviceAllow=char-rtc r (systemd.exec(5),
    systemd.resource-control(5)): with it every ``zfs`` command of the agent was
    refused /dev/zfs under the unit."""
    service = unit_text("/opt/remotevss/bin/remotevss").split("[Service]", 1)[1]
    keys = {line.split("=", 1)[0] for line in service.splitlines()
            if "=" in line and not line.startswith("#")}
    device_policy = {"DeviceAllow", "DevicePolicy", "PrivateDevices", "ProtectClock"}
    assert not keys & device_policy, sorted(keys & device_policy)


def test_unit_does_not_restart_on_a_configuration_error(tmp_path: Path) -> None:
    """The unit runs ``--config /etc/remotevss/agent.toml``; without that file (the
    unit installed by --print-unit alone) or with an error in it, the agent exits 2.
    Restart=on-failure every 5 s never reaches systemd's start limit, so the unit
    restarted for ever; a restart cannot fix the file: it must fail and stay failed."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "remotevss.cli", "agent", "--config", str(tmp_path / "no.toml")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )  # fmt: skip
    assert r.stderr.startswith("remotevss: configuration error:"), r.stderr
    unit = unit_text("/opt/remotevss/bin/remotevss")
    assert _unit_argv(unit, "Restart") == ["on-failure"]
    assert str(r.returncode) in _unit_argv(unit, "RestartPreventExitStatus"), unit


def _unit_argv(unit: str, key: str) -> list[str]:
    (line,) = [x for x in unit.splitlines() if x.startswith(f"{key}=")]
    return line.split("=", 1)[1].split()


def test_print_unit_runs_the_agent_with_the_given_config(tmp_path: Path) -> None:
    """``--print-unit --config FILE``: the unit runs this installation's agent with that
    file (absolute: systemd starts it in /), ordered after winbindd (RPC NTLM checks
    go through it) and before smbd; systemd-analyze accepts it."""
    import shlex
    import shutil
    import subprocess
    import sys

    (tmp_path / "site.toml").write_text("[agent]\n")
    r = subprocess.run(
        [sys.executable, "-m", "remotevss.cli", "agent", "--config", "site.toml", "--print-unit"],
        capture_output=True, text=True, check=True, cwd=tmp_path, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )  # fmt: skip
    unit = r.stdout
    argv = shlex.split(unit.split("ExecStart=", 1)[1].splitlines()[0])
    agent_at = argv.index("agent")
    assert argv[agent_at:agent_at + 3] == ["agent", "--config", str(tmp_path / "site.toml")]
    assert argv.count("--config") == 1
    # the program part runs here: the unit starts this installation, not a guess
    help_run = subprocess.run([*argv[:agent_at], "agent", "--help"], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
    assert help_run.returncode == 0 and "--print-unit" in help_run.stdout, help_run.stderr
    assert "winbind.service" in _unit_argv(unit, "After")
    assert "winbind.service" in _unit_argv(unit, "Wants")
    assert "smbd.service" in _unit_argv(unit, "Before")
    if shutil.which("systemd-analyze"):
        path = tmp_path / "remotevss-agent.service"
        path.write_text(unit)
        v = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
        assert v.returncode == 0, v.stdout + v.stderr


def test_doctor_names_when_the_spec_timer_is_1800_seconds(tmp_path: Path) -> None:
    """1800 s follows Add, Prepare and GetShareMapping (MS-FSRVP 3.1.4); the context's
    ATTR_AUTO_RECOVERY has nothing to do with it."""
    from remotevss.setup.doctor import check_agent

    [timer] = [c for c in check_agent(str(tmp_path / "none.sock"), None)
               if c.name == "sequence timer"]  # fmt: skip
    assert "AUTO_RECOVERY" not in timer.detail
    assert "1800 s after Add, Prepare and GetShareMapping" in timer.detail
