"""The agent process as systemd runs it: READY/WATCHDOG over $NOTIFY_SOCKET, SIGHUP
reloads, SIGTERM releases what cannot outlive it, one JSON event line per call."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from remotevss.agent.admin import request
from remotevss.agent.journal import Journal
from remotevss.fsrvp.constants import CTX_APP_ROLLBACK, CTX_BACKUP, HResult
from tests.conftest import LoopFs
from tests.system.agent_harness import AgentProcess

pytestmark = pytest.mark.root

ZERO = HResult.ZERO


class OpsAgent(AgentProcess):
    """The shared harness, with the copy backend and extra TOML appended."""

    extra_toml: str = ""

    def write_config(self) -> None:
        lines = [
            "[agent]",
            f'socket = "{self.socket}"',
            f'state_dir = "{self.workdir / "state"}"',
            f'expose_dir = "{self.expose_dir}"',
            'netbios_name = "TESTFS"',
            'backend = "copy"',
        ]
        if self.sequence_timeout is not None:
            lines.append(f"sequence_timeout = {self.sequence_timeout}")
        lines.append("[shares]")
        lines += [f'{name} = "{path}"' for name, path in self.shares.items()]
        extra = self.extra_toml or '[log]\nformat = "json"\n'  # every line a JSON object
        self.config.write_text("\n".join(lines) + "\n" + extra)

    def events(self) -> list[dict[str, object]]:
        """Every JSON line of the log (``--log-format json``)."""
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


def unc(name: str) -> str:
    return f"\\\\testfs\\{name}\\"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    yield s, path
    s.close()


def _agent(tmp_path: Path, share: Path, extra: str = "", **kw: object) -> OpsAgent:
    work = tmp_path / "agent"
    work.mkdir(exist_ok=True)
    a = OpsAgent(work, {"data": share}, **kw)  # type: ignore[arg-type]
    a.extra_toml = extra
    return a


def _wait_for(pred: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_notify_ready_watchdog_and_sighup_reload(
    tmp_path: Path, loopfs: LoopFs, notify_socket: tuple[socket.socket, str]
) -> None:
    share = loopfs("tmpfs") / "data"
    share.mkdir()
    sock, path = notify_socket
    a = _agent(tmp_path, share, sequence_timeout=300,
               extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    a.start()
    try:
        got: list[str] = []
        while not any("WATCHDOG=1" in m for m in got) or not any("READY=1" in m for m in got):
            got.append(sock.recv(4096).decode())
        ready = next(m for m in got if "READY=1" in m)
        assert a.proc is not None and f"MAINPID={a.proc.pid}" in ready
        pings = sum("WATCHDOG=1" in m for m in got)
        t0 = time.monotonic()
        while pings < 4:  # every WATCHDOG_USEC / 2 = 0.1 s
            if "WATCHDOG=1" in sock.recv(4096).decode():
                pings += 1
        assert time.monotonic() - t0 < 2

        # the timer is 300 s: a started set survives a short pause
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            time.sleep(0.6)
            assert c.add(sid, unc("data")).return_value == ZERO
            assert c.abort(sid).return_value == ZERO

        # SIGHUP with sequence_timeout = 0.3 in the file: RELOADING=1 then READY=1
        a.config.write_text(a.config.read_text().replace("sequence_timeout = 300",
                                                         "sequence_timeout = 0.3"))
        a.proc.send_signal(signal.SIGHUP)
        seen: list[str] = []
        while not any("READY=1" in m for m in seen):
            seen.append(sock.recv(4096).decode())
        assert any("RELOADING=1" in m for m in seen)
        st = request(str(a.socket) + ".admin", "status")
        assert st["agent"]["reloads"] == 1 and st["agent"]["sequence_timeout"] == 0.3
        reload_ev = [e for e in a.events() if e.get("event") == "reload"]
        assert reload_ev and reload_ev[-1]["changed"] == ["sequence_timeout"]
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            time.sleep(0.6)  # the new, short timer fires and drops the set
            assert c.add(sid, unc("data")).return_value == HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH
    finally:
        assert a.stop() == 0
    assert any("STOPPING=1" in m for m in _drain(sock))


def _drain(sock: socket.socket) -> list[str]:
    sock.settimeout(0.2)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out


def test_sigterm_mid_sequence_leaks_nothing_and_keeps_persistent(
    tmp_path: Path, loopfs: LoopFs
) -> None:
    share = loopfs("tmpfs") / "data"
    share.mkdir()
    (share / "file").write_text("v1\n")
    a = _agent(tmp_path, share)
    a.start()
    try:
        with a.client() as c:
            # a persistent copy: exposed, recovered: must survive the restart
            assert c.set_context(CTX_APP_ROLLBACK).return_value == ZERO
            keep = c.start(uuid.uuid4()).shadow_copy_set_id
            keep_copy = c.add(keep, unc("data")).shadow_copy_id
            assert c.prepare(keep).return_value == ZERO
            assert c.commit(keep).return_value == ZERO
            assert c.expose(keep).return_value == ZERO
            assert c.recovery_complete(keep).return_value == ZERO
            kept_share = f"data@{{{keep_copy}}}"
            # an auto-release backup, committed and exposed, never finished
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            cid = c.add(sid, unc("data")).shadow_copy_id
            assert c.prepare(sid).return_value == ZERO
            assert c.commit(sid).return_value == ZERO
            assert c.expose(sid).return_value == ZERO
            assert set(a.exposed()) == {kept_share, f"data@{{{cid}}}"}
            assert len(a.snapshots()) == 2
            assert a.proc is not None
            a.proc.send_signal(signal.SIGTERM)
            assert a.wait_dead() == 0
    finally:
        a.stop()
    # nothing of the unfinished set is left: no snapshot, no share, no journal entry
    assert set(a.exposed()) == {kept_share}
    (snap,) = a.snapshots()
    assert (snap / "file").read_text() == "v1\n"
    j = Journal(a.workdir / "state" / "journal.sqlite3")
    try:
        assert [s.id for s in j.load_sets()] == [keep] and j.pending_intents() == []
    finally:
        j.close()

    events = a.events()
    calls = [e for e in events if e.get("event") == "fsrvp_call"]
    assert [e["opnum"] for e in calls[:6]] == [
        "SET_CONTEXT", "START_SHADOW_COPY_SET", "ADD_TO_SHADOW_COPY_SET",
        "PREPARE_SHADOW_COPY_SET", "COMMIT_SHADOW_COPY_SET", "EXPOSE_SHADOW_COPY_SET"]
    for e in calls:
        assert e["result"] == "ZERO" and e["hresult"] == "0x00000000"
        assert e["caller"] == "root" and e["client"] == "unix:0" and e["transport"] == "unix"
        assert isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0
        assert e["level"] == "info" and e["logger"] == "remotevss.events" and "ts" in e
    add = calls[2]
    assert (add["set"], add["copy"], add["share"]) == (str(keep), str(keep_copy), unc("data"))
    assert calls[1]["set"] == str(keep) and calls[0]["context"] == f"0x{CTX_APP_ROLLBACK:08X}"
    (released,) = [e for e in events if e.get("event") == "shutdown_release"]
    assert released["set"] == str(sid) and released["status"] == "Exposed"

    # and the restarted agent keeps the persistent copy, exposed
    a.start()
    try:
        st = request(str(a.socket) + ".admin", "status")
        assert [s["id"] for s in st["sets"]] == [str(keep)]
        assert st["healthy"] and kept_share in st["exposed_shares"]
    finally:
        a.stop()


def test_trace_logs_pdus_and_effects(tmp_path: Path, loopfs: LoopFs) -> None:
    share = loopfs("tmpfs") / "data"
    share.mkdir()
    a = _agent(tmp_path, share, extra='[log]\nformat = "json"\ntrace = true\n')
    a.start()
    try:
        with a.client() as c:
            assert c.set_context(CTX_BACKUP).return_value == ZERO
            sid = c.start(uuid.uuid4()).shadow_copy_set_id
            assert c.add(sid, unc("data")).return_value == ZERO
            assert c.prepare(sid).return_value == ZERO
            assert c.commit(sid).return_value == ZERO
            assert c.abort(sid).return_value == ZERO
        _wait_for(lambda: any(e.get("logger") == "remotevss.trace" and "ABORT" in str(e["msg"])
                              for e in a.events()))
    finally:
        a.stop()
    events = a.events()
    trace = [str(e["msg"]) for e in events if e.get("logger") == "remotevss.trace"]
    assert any(m.startswith("SET_CONTEXT request SetContextRequest(context=0)") for m in trace)
    start = next(m for m in trace if m.startswith("START_SHADOW_COPY_SET response"))
    assert f"shadow_copy_set_id={sid}" in start and "stub=" in start
    # effects: the snapshot taken at commit, the teardown of the aborted set
    agent = [str(e["msg"]) for e in events if e.get("logger") == "remotevss.agent"]
    assert any("created (copy)" in m for m in agent)
    assert any(f"set {sid} dropped" in m for m in agent)


def test_json_log_format_makes_every_line_json(tmp_path: Path, loopfs: LoopFs) -> None:
    """``--log-format json``, the unit's default: every line on stderr is a JSON object
    (docs/operations.md), the start-up report and the "serving FSRVP" line too, so a
    log shipper reading the journal as JSON takes each line.  They were plain text."""
    share = loopfs("tmpfs") / "data"
    share.mkdir()
    (share / "f").write_text("x")
    a = _agent(tmp_path, share, sequence_timeout=300)
    a.start()
    with a.client() as c:  # a committed set that the next start-up has to deal with
        assert c.set_context(CTX_BACKUP).return_value == ZERO
        sid = c.start(uuid.uuid4()).shadow_copy_set_id
        assert c.add(sid, unc("data")).return_value == ZERO
        assert c.prepare(sid).return_value == ZERO
        assert c.commit(sid).return_value == ZERO
    assert a.proc is not None
    a.proc.kill()
    a.wait_dead()
    a.start()
    assert a.stop() == 0
    lines = [x for x in a.log.read_text().splitlines() if x.strip()]
    objects = []
    for line in lines:
        try:
            objects.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON object: {line!r}")
    msgs = [str(o.get("msg", "")) for o in objects]
    assert sum("serving FSRVP on" in m for m in msgs) == 2, msgs
    assert any(m.startswith("start-up:") for m in msgs), msgs
    assert all({"ts", "level", "logger"} <= set(o) for o in objects)
