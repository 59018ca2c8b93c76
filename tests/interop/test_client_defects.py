r"""``remotevss shadow`` defects found by testing against real servers, each kept fixed.

The servers are those of test_client_samba.py (Samba 4.17's own rpcd_fsrvp) and
test_client_agent.py (our agent behind smbd, spec mode); a test that is about
one kind of server says so.  The client runs as a separate process with a
private client table, as a user would run it, and after every test nothing
may be left on the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_client_samba import Server, _make_server, clean, cli, sets, state

from remotevss.samba.private import missing_tools

TOOLS = ("smbd", "smbpasswd", "net", "mkfs.btrfs")
_missing = missing_tools(*TOOLS)
_no_rpcd_fsrvp = not Path("/usr/libexec/samba/rpcd_fsrvp").exists()
__all__ = ["clean", "state"]  # fixtures of the client suite, used here as they are
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("client-defects")
    with loop_filesystem("btrfs", 512, work) as mnt:
        yield work, mnt


@pytest.fixture(scope="module", params=["samba", "agent"])
def server(request: pytest.FixtureRequest, btrfs: tuple[Path, Path]) -> Iterator[Server]:
    """Samba's FSRVP server, then ours; thirteen shares each (Samba names snapshots by
    the second, so each creation takes shares of its own)."""
    kind = request.param
    if kind == "samba" and _no_rpcd_fsrvp:
        pytest.skip("Samba's rpcd_fsrvp is not installed")
    work, mnt = btrfs
    s = _make_server(work / kind, mnt, f"{kind}d", 13, agent=kind == "agent")
    try:
        yield s
    finally:
        s.stop()


def _share(server: Server, i: int) -> str:
    return server.unc(list(server.shares)[i])


# ----------------------------------------------------------------- not an SMB server


def test_a_server_that_is_not_smb_is_named_so(state: Path) -> None:
    """A port where something else listens (a web server answering and hanging up)
    gave "SMB negotiation on port N failed: No answer!" (impacket's words)."""
    import threading

    with socket.socket() as web:
        web.bind(("127.0.0.1", 0))
        web.listen(4)
        port = web.getsockname()[1]

        def answer() -> None:
            with contextlib.suppress(OSError):
                while True:
                    c, _ = web.accept()
                    with c:
                        c.recv(4096)
                        c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        r = cli(None, state, "query", r"\\127.0.0.1\data", port=port)
    assert r.returncode == 3, r.stderr
    assert "No answer!" not in r.stderr, r.stderr
    assert f"127.0.0.1: no SMB answer on port {port}: the connection was closed" in r.stderr


# ----------------------------------------------------------------- delete --share of one copy


def test_explicit_delete_of_one_copy_keeps_the_rest_of_the_set(clean: Server, state: Path) -> None:
    """`delete --share --set --copy` on one copy of a recorded set removed the whole
    set from the table, and the other copy stayed on the server for good."""
    srv = clean
    data, home = _share(srv, 0), _share(srv, 1)
    r = cli(srv, state, "--json", "create", "--context", "nas-rollback", data, home)
    assert r.returncode == 0, r.stderr
    (created,) = json.loads(r.stdout)["sets"]
    sid = created["set_id"]
    by_share = {c["original_share"]: c["copy_id"] for c in created["copies"]}
    try:
        r = cli(srv, state, "delete", "--share", data, "--set", sid, "--copy", by_share[data])
        assert r.returncode == 0 and f"deleted shadow copy {{{by_share[data]}}}" in r.stdout, (
            r.stderr
        )
        r = cli(srv, state, "--json", "list")
        assert r.returncode == 0, r.stderr
        (left,) = json.loads(r.stdout)["sets"]
        assert left["set_id"] == sid
        assert [c["copy_id"] for c in left["copies"]] == [by_share[home]]
        assert left["copies"][0]["status"] == "ok"
        assert len(srv.leftovers()) == 2  # home's snapshot share and snapshot
        # a copy id the table has under another share is a typo: refused, nothing sent
        r = cli(srv, state, "delete", "--share", data, "--set", sid, "--copy", by_share[home])
        assert r.returncode == 2 and "is recorded for" in r.stderr, r.stderr
        # the last copy, named explicitly too: the set leaves the table
        r = cli(srv, state, "delete", "--share", home, "--set", sid, "--copy", by_share[home])
        assert r.returncode == 0, r.stderr
        assert sets(srv, state) == []
    finally:  # whatever the table says, nothing may stay on the server
        for share, cid in by_share.items():
            if srv.leftovers():
                cli(srv, state.with_name("cleanup.sqlite3"), "delete", "--share", share,
                    "--set", sid, "--copy", cid)  # fmt: skip


def test_delete_of_one_copy_of_an_unexposed_set_is_refused_not_aborting_the_rest(
    clean: Server, state: Path
) -> None:
    """`delete COPY_ID` of a set that was committed but never exposed aborted the
    whole set -- every other shadow copy of it gone without a word -- because
    FSRVP deletes single copies only from an exposed set.  Now refused (exit 2,
    nothing sent, nothing changed); a set of one copy is still aborted."""
    srv = clean
    data, home = _share(srv, 2), _share(srv, 3)
    r = cli(srv, state, "--json", "create", "--no-expose", data, home)
    assert r.returncode == 0, r.stderr
    (created,) = json.loads(r.stdout)["sets"]
    sid, copies = created["set_id"], [c["copy_id"] for c in created["copies"]]
    before = srv.leftovers()
    assert len(before) == 2  # the two snapshots, not exposed
    r = cli(srv, state, "delete", copies[0])
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"one of 2 in set {{{sid}}}" in r.stderr and f"'delete {sid}'" in r.stderr, r.stderr
    assert srv.leftovers() == before
    (left,) = sets(srv, state)
    assert left["set_id"] == sid and len(left["copies"]) == 2
    r = cli(srv, state, "delete", sid)
    assert r.returncode == 0 and "aborted set" in r.stdout, r.stderr
    assert srv.leftovers() == [] and sets(srv, state) == []
    # one copy in the set: deleting it by its copy id is the abort the user asked for
    r = cli(srv, state, "--json", "create", "--no-expose", _share(srv, 4))
    assert r.returncode == 0, r.stderr
    (one,) = json.loads(r.stdout)["sets"]
    r = cli(srv, state, "delete", one["copies"][0]["copy_id"])
    assert r.returncode == 0 and "aborted set" in r.stdout, r.stderr
    assert srv.leftovers() == [] and sets(srv, state) == []


# ----------------------------------------------------------------- a client killed mid-create


@pytest.mark.parametrize("server_ahead", ["committed", "exposed"])
def test_delete_after_a_crash_cleans_up_a_set_the_server_took_further(
    clean: Server, tmp_path: Path, server_ahead: str
) -> None:
    """A client killed between the server's answer to Commit (or Expose) and the
    table's update leaves the set one step behind in the table (`added`,
    `committed`).  `delete` then aborted it: Samba answers ZERO to Abort of a
    committed or exposed set and keeps it, our agent answers BAD_STATE for an
    exposed one (read as "already gone"); either way the table forgot the set and
    its snapshot (and snapshot share) stayed on the server for good."""
    from remotevss.client.shadow import ShadowCopySet
    from remotevss.client.state import ClientState
    from remotevss.fsrvp import calls

    srv = clean
    state = tmp_path / "crashed.sqlite3"
    st = ClientState(state)
    s = ShadowCopySet(None, srv.creds, options=srv.options(), state=st)
    s.add(_share(srv, 6 if server_ahead == "committed" else 7))
    assert s.set_id is not None
    if server_ahead == "committed":
        s.prepare()  # the table says `added`; Commit answered, then the client died
        s._binding().checked(calls.CommitShadowCopySetRequest(s.set_id, 60_000))
    else:
        s.commit()  # the table says `committed`; Expose answered, then the client died
        s._binding().checked(calls.ExposeShadowCopySetRequest(s.set_id, 60_000))
    s.close()
    st.close()
    assert srv.leftovers() != []
    (rec,) = sets(srv, state)
    assert rec["status"] == ("added" if server_ahead == "committed" else "committed")

    r = cli(srv, state, "delete", rec["set_id"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert srv.leftovers() == [], r.stdout + r.stderr
    assert sets(srv, state) == []
    assert f"aborted set {{{rec['set_id']}}}" in r.stdout, r.stdout
    if not srv.agent:  # our agent aborts a set in any state; Samba keeps it
        assert f"the server had it {server_ahead}: " in r.stdout and "deleted)" in r.stdout


# ----------------------------------------------------------------- the client table


def _one_line_error(r: subprocess.CompletedProcess[str], path: Path) -> None:
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"remotevss shadow: error: client table {path}:"), line


def test_unusable_client_table_fails_before_anything_is_sent(
    clean: Server, tmp_path: Path
) -> None:
    """A bad --state gave a traceback and exit 1 ("an FSRVP error"); a read-only
    table even let the server start a set first."""
    srv = clean
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database\n")
    frozen = tmp_path / "frozen.sqlite3"
    r = cli(srv, frozen, "list")  # makes the table
    assert r.returncode == 0, r.stderr
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            dead_port = unused.getsockname()[1]
        for path in (Path("/proc/nope/x.sqlite3"), not_sqlite, frozen):
            r = cli(srv, tmp_path / "unused.sqlite3", "--state", str(path), "create",
                    _share(srv, 4))  # fmt: skip
            _one_line_error(r, path)
            assert srv.leftovers() == []
            # checked before connecting: a dead server is not even tried (exit 3)
            r = cli(srv, tmp_path / "unused.sqlite3", "--state", str(path), "create",
                    _share(srv, 4), port=dead_port)  # fmt: skip
            _one_line_error(r, path)
        assert not_sqlite.read_text() == "not a database\n"
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)


# ----------------------------------------------------------------- query --json


def test_query_json_keeps_every_share_result(clean: Server, state: Path) -> None:
    """`--json query A B` printed nothing when B failed, losing A's answer."""
    srv = clean
    good, bad, also = _share(srv, 5), srv.unc("no_such_share"), _share(srv, 0)
    r = cli(srv, state, "--json", "query", good, bad, also)
    assert r.returncode == 1, r.stderr
    paths = json.loads(r.stdout)["paths"]
    assert [p["share"] for p in paths] == [good, bad, also]
    assert paths[0]["supported"] is True and paths[2]["supported"] is True
    assert "error" not in paths[0] and paths[1]["exit_code"] == 1
    assert "IsPathSupported failed" in paths[1]["error"]
    assert "no such share on the server" in paths[1]["error"]
    assert "IsPathSupported failed" in r.stderr
    # text: each answer on stdout, the failure on stderr, the same exit code
    r = cli(srv, state, "query", good, bad)
    assert r.returncode == 1 and f"{good}: supported" in r.stdout, r.stderr
    assert "IsPathSupported failed" in r.stderr


# ----------------------------------------------------------------- script mode: exec


def test_script_exec_failure_has_its_own_exit_code(
    clean: Server, state: Path, tmp_path: Path
) -> None:
    """A failing `exec` ended a script with 2, the code of a script syntax error."""
    srv = clean
    script = tmp_path / "backup.dsh"
    script.write_text(
        f"add {_share(srv, 1)}\ncreate\nexec {shutil.which('false')}\necho not reached\n"
    )
    r = cli(srv, state, "-s", str(script))
    assert r.returncode == 8, r.stdout + r.stderr
    assert f"{script}:3: exec " in r.stderr and "exited with status 1" in r.stderr
    assert "not reached" not in r.stdout and "releasing auto-release set" in r.stdout
    assert sets(srv, state) == []
    script.write_text(f"exec {tmp_path / 'no-such-program'}\n")
    r = cli(srv, state, "-s", str(script))
    assert r.returncode == 8 and "cannot run it" in r.stderr, r.stderr
    script.write_text("frobnicate\n")
    assert cli(srv, state, "-s", str(script)).returncode == 2


def test_expose_of_a_set_the_server_exposed_already_keeps_it(
    clean: Server, tmp_path: Path
) -> None:
    """The table says `committed`, the server has the set exposed (the client was killed
    between Expose's answer and the table's update).  `expose ID` got BAD_STATE,
    said "the server does not know this shadow copy set" (exit 5) and then aborted
    the set as a failed creation: the user's shadow copy was deleted (our agent) or
    left on the server and dropped from the table (Samba)."""
    from remotevss.client.shadow import ShadowCopySet
    from remotevss.client.state import ClientState
    from remotevss.fsrvp import calls

    srv = clean
    state = tmp_path / "crashed.sqlite3"
    st = ClientState(state)
    s = ShadowCopySet(None, srv.creds, options=srv.options(), state=st,
                      context="nas-rollback")  # fmt: skip
    s.add(_share(srv, 3))
    s.commit()
    assert s.set_id is not None
    s._binding().checked(calls.ExposeShadowCopySetRequest(s.set_id, 60_000))
    s.close()
    st.close()
    sid = str(s.set_id)
    try:
        r = cli(srv, state, "--json", "expose", sid)
        assert r.returncode == 0, r.stdout + r.stderr
        (done,) = json.loads(r.stdout)["sets"]
        assert done["status"] == "recovered" and done["copies"][0]["snapshot_share"]
        assert "already exposed on the server" in r.stderr, r.stderr
        assert len(srv.leftovers()) == 2  # its snapshot and snapshot share, still there
        name = list(srv.shares)[3]
        assert srv.read(done["copies"][0]["exposed_name"]) == f"{name}: version 1\n".encode()
        assert [x["status"] for x in sets(srv, state)] == ["recovered"]
    finally:
        r = cli(srv, state, "delete", sid)
        assert r.returncode == 0, r.stderr
    assert sets(srv, state) == []


def test_list_records_a_set_the_server_exposed_as_exposed(clean: Server, tmp_path: Path) -> None:
    """`list` showed such a set (table: committed, server: exposed) as `committed`
    with a snapshot share, and `recover` refused it ("recover needs an exposed set")."""
    from remotevss.client.shadow import ShadowCopySet
    from remotevss.client.state import ClientState
    from remotevss.fsrvp import calls

    srv = clean
    state = tmp_path / "crashed.sqlite3"
    st = ClientState(state)
    s = ShadowCopySet(None, srv.creds, options=srv.options(), state=st,
                      context="app-rollback", writable=True)  # fmt: skip
    s.add(_share(srv, 11))
    s.commit()
    assert s.set_id is not None
    s._binding().checked(calls.ExposeShadowCopySetRequest(s.set_id, 60_000))
    s.close()
    st.close()
    sid = str(s.set_id)
    try:
        r = cli(srv, state, "list")
        assert r.returncode == 0, r.stderr
        assert "Status:           exposed (found exposed on the server; the client table " \
            "had it committed)" in r.stdout, r.stdout
        r = cli(srv, state, "recover", sid)
        assert r.returncode == 0 and "recovered (RecoveryComplete)" in r.stdout, r.stderr
        assert [x["status"] for x in sets(srv, state)] == ["recovered"]
    finally:
        r = cli(srv, state, "delete", sid)
        assert r.returncode == 0, r.stderr
    assert sets(srv, state) == []


def test_ctrl_c_between_request_and_answer_cleans_up_on_a_fresh_binding(
    clean: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C after a request went out and before its answer was read: the clean-up
    ran on the same pipe and read the interrupted call's answer as its own
    ("GetSupportedVersion failed: 0x005A1260", the set id's first bytes), so the
    abort or delete did not happen as the client believed."""
    from remotevss.client.connection import FsrvpConnection
    from remotevss.client.shadow import CreateRequest, create_shadow_copies
    from remotevss.client.state import ClientState
    from remotevss.fsrvp.constants import Opnum

    srv = clean
    armed = [True]

    def connector(host: str, creds: Any, opts: Any) -> FsrvpConnection:
        conn = FsrvpConnection(host, creds, opts)
        send = conn._dce.call

        def call(op: int, stub: bytes, *a: Any, **kw: Any) -> Any:
            sent = send(op, stub, *a, **kw)
            if op == Opnum.COMMIT_SHADOW_COPY_SET and armed[0]:
                armed[0] = False
                raise KeyboardInterrupt  # the request is on the wire; its answer unread
            return sent

        conn._dce.call = call
        return conn

    st = ClientState(tmp_path / "api.sqlite3")
    share = 10
    with caplog.at_level("WARNING", "remotevss.client"), pytest.raises(KeyboardInterrupt):
        create_shadow_copies(CreateRequest([_share(srv, share)]), srv.creds, srv.options(),
                             state=st, connector=connector)  # fmt: skip
    assert not armed[0]
    assert "could not clean up" not in caplog.text, caplog.text
    assert st.sets() == [] and srv.leftovers() == []


def test_delete_of_a_set_the_server_forgot_names_a_snapshot_share_still_served(
    clean: Server, state: Path, tmp_path: Path
) -> None:
    """The server forgot a set but still serves its snapshot share (Samba 4.17 does
    this to one of two concurrent creations, docs/client.md): `delete` said "already
    gone on the server; removed from the client table", and the share stayed."""
    srv = clean
    r = cli(srv, state, "--json", "create", _share(srv, 12))
    assert r.returncode == 0, r.stderr
    (made,) = json.loads(r.stdout)["sets"]
    (copy,) = made["copies"]
    # forgotten by the server (deleted behind this table's back) ...
    r = cli(srv, tmp_path / "other.sqlite3", "delete", "--share", copy["original_share"],
            "--set", made["set_id"], "--copy", copy["copy_id"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    # ... while a share of the snapshot share's name is still served
    name = copy["exposed_name"]
    srv.samba.net("conf", "addshare", name, str(srv.shares[list(srv.shares)[12]]))
    try:
        r = cli(srv, state, "delete", made["set_id"])
        assert r.returncode == 0, r.stderr
        assert "already gone on the server" in r.stderr, r.stderr
        assert f"its snapshot share {copy['snapshot_share']} is still served" in r.stderr, r.stderr
    finally:
        srv.samba.net("conf", "delshare", name)
    r = cli(srv, state, "delete", made["set_id"])
    assert r.returncode == 5  # gone from the table all the same


# ----------------------------------------------------------------- another client meanwhile


def test_a_set_dropped_by_another_clients_start_is_explained(
    clean: Server, tmp_path: Path
) -> None:
    """Two clients at once against a spec server: the second one's SetContext drops the
    first one's set (MS-FSRVP runs one creation at a time; Samba lets both run).  The
    first `create` failed with "the server does not know this shadow copy set" and
    exit 5, the code the docs keep for an explicit id the server does not know."""
    from remotevss.client import errors
    from remotevss.client.connection import FsrvpConnection
    from remotevss.client.shadow import CreateRequest, create_shadow_copies, describe_error
    from remotevss.client.state import ClientState
    from remotevss.fsrvp import calls

    srv = clean
    if not srv.agent:
        pytest.skip("Samba's rpcd_fsrvp answers both clients (docs/client.md)")

    class Interleaved(FsrvpConnection):
        """This client's binding; before its Prepare, another client starts a creation."""

        def checked(self, request: calls.Request, detail: str = "") -> calls.Response:
            if isinstance(request, calls.PrepareShadowCopySetRequest):
                with FsrvpConnection("127.0.0.1", srv.creds, srv.options()) as other:
                    other.checked(calls.SetContextRequest(0))
            return super().checked(request, detail)

    st = ClientState(tmp_path / "api.sqlite3")
    with pytest.raises(errors.NoSuchSet) as exc:
        create_shadow_copies(CreateRequest([_share(srv, 5)]), srv.creds, srv.options(),
                             state=st, connector=Interleaved)  # fmt: skip
    text = describe_error(exc.value)
    assert "PrepareShadowCopySet failed" in text, text
    assert "the server dropped the set during the creation" in text, text
    assert "another FSRVP client" in text, text
    assert exc.value.exit_code == 1  # an FSRVP error; 5 is for ids the user named
    assert st.sets() == [] and srv.leftovers() == []


# ----------------------------------------------------------------- script mode: DiskShadow's words


def test_diskshadow_script_vocabulary(clean: Server, state: Path, tmp_path: Path) -> None:
    """A DiskShadow user's script stopped at its first line: `set context persistent
    nowriters` ("unknown context"), `begin backup` ("unknown command"), `add volume
    \\\\fs\\share\\ alias X` ("add \\\\host\\share [alias NAME]").  DiskShadow's
    contexts map onto FSRVP's (persistent: app-rollback, persistent nowriters:
    nas-rollback, volatile: backup, volatile nowriters: file-share-backup)."""
    srv = clean
    script = tmp_path / "backup.dsh"
    script.write_text(
        "SET CONTEXT PERSISTENT NOWRITERS\n"
        "set verbose on\n"
        "begin backup\n"
        f"add volume {_share(srv, 8)}\\ alias DATA\n"
        "create\n"
        "end backup\n"
        "list shadows set %VSS_SHADOW_SET%\n"
        "set context volatile\n"
        f"add volume {_share(srv, 9)}\n"
        "create\n"
        "exit\n"
    )
    r = cli(srv, state, "-s", str(script))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Context:          nas-rollback (0x00000019)" in r.stdout
    assert "releasing auto-release set" in r.stdout  # the volatile (backup) one
    (kept,) = sets(srv, state)
    assert kept["context"] == "nas-rollback"
    assert [c["original_share"] for c in kept["copies"]] == [_share(srv, 8)]
    script.write_text("set context persistent\nset context volatile nowriters\n"
                      "delete shadows all\n")  # fmt: skip
    r = cli(srv, state, "-s", str(script))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sets(srv, state) == []
    script.write_text("set context clientaccessible\n")
    r = cli(srv, state, "-s", str(script))
    assert r.returncode == 2 and "clientaccessible" in r.stderr, r.stderr
    assert "no FSRVP context" in r.stderr, r.stderr


# ----------------------------------------------------------------- a set the server recovered


@pytest.fixture
def agent_server(btrfs: tuple[Path, Path]) -> Iterator[Server]:
    """Our agent behind smbd, for a test that restarts it."""
    work, mnt = btrfs
    name = f"rec{int(time.monotonic() * 1000) % 100000}-"
    s = _make_server(work / name, mnt, name, 4, agent=True)
    try:
        yield s
    finally:
        with contextlib.suppress(ProcessLookupError, AssertionError):
            s.signal_fsrvp(signal.SIGCONT)
        s.stop()
    assert s.leftovers() == []


def test_set_recovered_by_the_server_is_shown_and_recover_says_so(
    agent_server: Server, state: Path
) -> None:
    """An agent restart seals exposed writable persistent sets (Recovered, read-only);
    `list` kept showing them exposed and writable, `recover` said the server did not
    know the set (exit 5), `expose` failed with BAD_STATE."""
    srv = agent_server
    ids = []
    for i in range(3):
        r = cli(srv, state, "--json", "create", "--context", "nas-rollback", "--writable",
                _share(srv, i))  # fmt: skip
        assert r.returncode == 0, r.stderr
        (s,) = json.loads(r.stdout)["sets"]
        assert s["status"] == "exposed"
        ids.append(s["set_id"])
    assert srv.agent is not None
    srv.agent.stop()  # SIGTERM: the agent seals both sets on its way down / back up
    srv.agent.start()
    try:
        r = cli(srv, state, "recover", ids[0])
        assert r.returncode == 0, r.stderr
        assert f"set {{{ids[0]}}} is already recovered" in r.stdout
        assert "read-only now" in r.stdout and "does not know" not in r.stderr

        r = cli(srv, state, "expose", ids[2])  # re-reads the mappings of an exposed set
        assert r.returncode == 0, r.stderr
        assert f"set {{{ids[2]}}} is recovered (by the server)" in r.stderr
        assert "Status:           recovered" in r.stdout

        r = cli(srv, state, "list")
        assert r.returncode == 0, r.stderr
        assert "Status:           exposed" not in r.stdout
        assert r.stdout.count("Status:           recovered (recovered by the server") == 3
        assert r.stdout.count("Read-only (sealed; created Writable)") == 3
        assert r.stdout.count("Verified:        no (FSRVP_E_BAD_STATE from GetShareMapping") == 3
        assert f"set {{{ids[1]}}}" in r.stderr and "recorded as recovered" in r.stderr
        assert f"set {{{ids[0]}}}" not in r.stderr and f"set {{{ids[2]}}}" not in r.stderr
        assert {s["status"] for s in sets(srv, state)} == {"recovered"}
        r = cli(srv, state, "recover", ids[1])
        assert r.returncode == 0 and "already recovered" in r.stdout, r.stderr

        # but a set that is really gone (deleted behind the table's back) stays "not found"
        r = cli(srv, state, "--json", "create", "--context", "app-rollback", "--writable",
                _share(srv, 3))  # fmt: skip
        assert r.returncode == 0, r.stderr
        (s,) = json.loads(r.stdout)["sets"]
        c = s["copies"][0]
        r = cli(srv, state.with_name("other.sqlite3"), "delete", "--share", c["original_share"],
                "--set", s["set_id"], "--copy", c["copy_id"])  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = cli(srv, state, "recover", s["set_id"])
        assert r.returncode == 5 and "does not know" in r.stderr, r.stderr
    finally:
        r = cli(srv, state, "delete", "--all")
        assert r.returncode == 0, r.stderr
