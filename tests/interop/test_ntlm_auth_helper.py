"""NTLM checked by Samba's ``ntlm_auth`` (squid-2.5-ntlmssp) through a private winbindd.

Two halves:

* against a real private Samba (smbd + winbindd, tdbsam passdb) with pyspnego
  as the client: session key and flags, reuse of one helper after a wrong
  password, abandoned conversations, garbage tokens, parallel conversations,
  no helper left after ``close()``, no fd of ours inherited, and the protocol
  facts the pool relies on (``YR`` resets a conversation);
* against a scripted fake helper (no root needed): every malformed reply,
  a helper that hangs or never reads, ``close()`` from another thread during
  a leg.  Each is killed, never reused, and costs at most the timeout.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import spnego

from remotevss.agent.ntlm_auth import MAX_TOKEN, LocalSamLogon, NtlmHelperPool, NtlmResult
from remotevss.dcerpc.connection import AuthError
from remotevss.samba.private import PASSWORD, PrivateSamba, missing_tools

HELPER_PROTOCOL = "--helper-protocol=squid-2.5-ntlmssp"
SIGN, SEAL, ESS, KEY128 = 0x10, 0x20, 0x80000, 0x20000000
TOOLS = ("smbd", "winbindd", "ntlm_auth", "unshare", "smbpasswd", "mount")
_missing = missing_tools(*TOOLS)


def gone(pid: int) -> bool:
    """Neither running nor a zombie (the pool reaps what it ends)."""
    return not Path(f"/proc/{pid}").exists()


# ------------------------------------------------------------------ real Samba


@pytest.fixture(scope="module")
def samba(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSamba]:
    if os.geteuid() != 0:
        pytest.skip("needs root (winbindd, mount namespace)")
    if _missing:
        pytest.skip(f"missing Samba/system tools: {_missing}")
    root = tmp_path_factory.mktemp("ntlmauth")
    (root / "share").mkdir()
    s = PrivateSamba(
        root / "samba",
        {"share": root / "share"},
        samba_fsrvp=False,
        winbind=True,
        share_options={"share": {"vfs objects": ""}},  # a plain directory, no btrfs
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def helper_argv(samba: PrivateSamba) -> list[str]:
    return [*samba.ntlm_auth_argv, HELPER_PROTOCOL, f"--configfile={samba.conf}"]


@pytest.fixture
def pool(samba: PrivateSamba) -> Iterator[NtlmHelperPool]:
    p = NtlmHelperPool(helper_argv(samba), size=2, timeout=5)
    try:
        yield p
    finally:
        p.close()


def logon(
    pool: NtlmHelperPool, user: str = "root", password: str = PASSWORD
) -> tuple[NtlmResult, bytes]:
    client = spnego.client(user, password, protocol="ntlm")
    acceptor = pool.acceptor()
    try:
        challenge = acceptor.negotiate(client.step() or b"")
        result = acceptor.authenticate(client.step(challenge) or b"")
    finally:
        acceptor.close()
    return result, client.session_key


@pytest.mark.root
@pytest.mark.parametrize("user", ["root", "ANCHORFS\\root", "anchorfs\\root"])
def test_good_password(pool: NtlmHelperPool, user: str) -> None:
    result, client_key = logon(pool, user)
    assert result.domain.upper() == "ANCHORFS" and result.account == "root"
    assert len(result.session_key) == 16 and result.session_key == client_key
    assert result.flags & (SIGN | SEAL | ESS | KEY128) == SIGN | SEAL | ESS | KEY128
    assert pool.stats.idle == 1  # the helper went back to the pool


@pytest.mark.root
def test_workgroup_user_is_sent_to_a_dc_with_a_hint(pool: NtlmHelperPool) -> None:
    """winbindd alone (a pool without LocalSamLogon, as on a member)."""
    with pytest.raises(AuthError, match="NO_LOGON_SERVERS.*domain controller"):
        logon(pool, "REMOTEVSS\\root")


@pytest.mark.root
@pytest.mark.parametrize("user", ["REMOTEVSS\\root", "WORKGROUP\\root", "anchorfs\\root"])
def test_local_sam_maps_other_domains_as_smbd(samba: PrivateSamba, user: str,
                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A standalone agent's pool: names of another domain are the local SAM's user, with
    the client's session key and flags; the netbios name still goes to winbindd."""
    local = LocalSamLogon(str(samba.conf), "ANCHORFS", timeout=20)
    p = NtlmHelperPool(helper_argv(samba), size=2, timeout=5, local_sam=local)
    caplog.set_level("INFO", "remotevss.agent.ntlm_auth")
    try:
        result, client_key = logon(p, user)
        assert (result.domain, result.account) == ("ANCHORFS", "root")
        assert result.session_key == client_key
        assert result.flags & (SIGN | SEAL | ESS | KEY128) == SIGN | SEAL | ESS | KEY128
        assert p.stats.idle == 1  # the helper that made the challenge went back
        mapped = "checked against the local SAM" in caplog.text
        assert mapped == (not user.upper().startswith("ANCHORFS\\")), caplog.text
        with pytest.raises(AuthError, match="NT_STATUS_LOGON_FAILURE"):
            logon(p, user, password="wrong")
        assert logon(p, user)[0].account == "root"  # and the pool serves on
    finally:
        p.close()


@pytest.mark.root
def test_wrong_password_then_the_same_helper_logs_on(pool: NtlmHelperPool) -> None:
    with pytest.raises(AuthError, match="logon failed: NT_STATUS_LOGON_FAILURE"):
        logon(pool, password="wrong")
    [pid] = pool.idle_pids  # the refused conversation gave its helper back
    result, _ = logon(pool)
    assert result.account == "root"
    assert pool.idle_pids == [pid]
    stats = pool.stats
    assert (stats.spawned, stats.killed, stats.live, stats.idle) == (1, 0, 1, 1)


@pytest.mark.root
def test_abandoned_conversation_then_a_good_one(pool: NtlmHelperPool) -> None:
    client = spnego.client("root", PASSWORD, protocol="ntlm")
    acceptor = pool.acceptor()
    acceptor.negotiate(client.step() or b"")
    [pid] = pool.live_pids
    acceptor.close()  # the client went away after the challenge: that helper is not kept
    acceptor.close()  # idempotent
    assert gone(pid) and pool.stats.live == 0
    result, key = logon(pool)
    assert result.session_key == key


@pytest.mark.root
def test_refused_token_at_authenticate_keeps_the_helper(pool: NtlmHelperPool) -> None:
    """Never sent (empty / oversized): the helper stays mid-conversation and is reused;
    the next conversation's YR resets it (see test_yr_resets_a_conversation)."""
    for token in (b"", b"N" * (MAX_TOKEN + 1)):
        client = spnego.client("root", PASSWORD, protocol="ntlm")
        acceptor = pool.acceptor()
        acceptor.negotiate(client.step() or b"")
        with pytest.raises(AuthError, match="refused"):
            acceptor.authenticate(token)
        acceptor.close()
    logon(pool)
    assert pool.stats.spawned == 1


@pytest.mark.root
def test_yr_resets_a_conversation(samba: PrivateSamba) -> None:
    """What reuse after NA relies on: a new YR starts afresh even mid-conversation,
    and an AUTHENTICATE for the old challenge is then refused."""
    proc = subprocess.Popen(
        helper_argv(samba), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None

    def ask(line: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        return proc.stdout.readline().decode().rstrip("\n")

    def b64(token: bytes | None) -> str:
        return base64.b64encode(token or b"").decode()

    try:
        old = spnego.client("root", PASSWORD, protocol="ntlm")
        old_tt = ask(f"YR {b64(old.step())}")
        new = spnego.client("root", PASSWORD, protocol="ntlm")
        new_tt = ask(f"YR {b64(new.step())}")
        assert old_tt.startswith("TT ") and new_tt.startswith("TT ") and old_tt != new_tt
        assert ask(f"KK {b64(old.step(base64.b64decode(old_tt[3:])))}").startswith("NA ")
        # the refused KK did not end the conversation: the right one still succeeds
        assert ask(f"KK {b64(new.step(base64.b64decode(new_tt[3:])))}") == "AF ANCHORFS\\root"
        assert base64.b64decode(ask("GK")[3:]) == new.session_key
        assert ask("GF").startswith("GF 0x")
    finally:
        proc.stdin.close()
        proc.wait(5)
        proc.stdout.close()


@pytest.mark.parametrize(
    "token",
    [os.urandom(200), b"NTLMSSP\x00\x01\x00\x00\x00", b"\x00" * 40],
    ids=["random", "short-negotiate", "zeros"],
)
@pytest.mark.root
def test_garbage_negotiate(pool: NtlmHelperPool, token: bytes) -> None:
    acceptor = pool.acceptor()
    t0 = time.monotonic()
    with pytest.raises(AuthError, match="INVALID_PARAMETER"):  # NA: the helper is reused
        acceptor.negotiate(token)
    acceptor.close()
    assert time.monotonic() - t0 < 3
    logon(pool)
    assert pool.stats.spawned == 1


@pytest.mark.root
@pytest.mark.parametrize("kind", ["random", "truncated", "negotiate", "zeros"])
def test_garbage_authenticate(pool: NtlmHelperPool, kind: str) -> None:
    client = spnego.client("root", PASSWORD, protocol="ntlm")
    negotiate = client.step() or b""
    acceptor = pool.acceptor()
    challenge = acceptor.negotiate(negotiate)
    good = client.step(challenge) or b""
    token = {
        "random": os.urandom(len(good)),
        "truncated": good[: len(good) // 3],
        "negotiate": negotiate,
        "zeros": bytes(40),
    }[kind]
    t0 = time.monotonic()
    with pytest.raises(AuthError, match="logon failed"):
        acceptor.authenticate(token)
    acceptor.close()
    assert time.monotonic() - t0 < 3
    with pytest.raises(AuthError, match="out of order"):  # no second try on one challenge
        acceptor.authenticate(good)
    logon(pool)
    assert pool.stats.spawned == 1


@pytest.mark.root
def test_empty_and_oversized_negotiate_spawn_nothing(pool: NtlmHelperPool) -> None:
    for token in (b"", b"N" * (MAX_TOKEN + 1)):
        acceptor = pool.acceptor()
        with pytest.raises(AuthError, match="refused"):
            acceptor.negotiate(token)
        acceptor.close()
    assert pool.stats.spawned == 0


@pytest.mark.root
def test_parallel_conversations(samba: PrivateSamba) -> None:
    """Four conversations at once, each on its own helper; two are kept afterwards."""
    pool = NtlmHelperPool(helper_argv(samba), size=2, timeout=10)
    barrier = threading.Barrier(4, timeout=30)
    results: list[tuple[NtlmResult, bytes]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            client = spnego.client("root", PASSWORD, protocol="ntlm")
            acceptor = pool.acceptor()
            challenge = acceptor.negotiate(client.step() or b"")
            barrier.wait()  # all four challenged: four helpers busy at once
            results.append((acceptor.authenticate(client.step(challenge) or b""),
                            client.session_key))  # fmt: skip
            acceptor.close()
            for _ in range(2):
                results.append(logon(pool))
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and len(results) == 12
        assert all(r.account == "root" and r.session_key == key for r, key in results)
        assert len({key for _, key in results}) == 12
        stats = pool.stats
        assert stats.spawned >= 4 and stats.idle == 2 and stats.live == 2
        assert stats.killed == stats.spawned - 2  # extras beyond size were ended
    finally:
        pool.close()


@pytest.mark.root
def test_close_leaves_no_helper(samba: PrivateSamba) -> None:
    pool = NtlmHelperPool(helper_argv(samba), size=4)
    client = spnego.client("root", PASSWORD, protocol="ntlm")
    busy = pool.acceptor()
    busy.negotiate(client.step() or b"")  # one helper mid-conversation
    logon(pool)  # and one idle
    pids = pool.live_pids
    assert len(pids) == 2
    for pid in pids:  # unshare and the wrapper exec'd: the pid is ntlm_auth's own
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "ntlm_auth"
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 3
    with pytest.raises(AuthError):  # the busy conversation fails, it does not hang
        busy.authenticate(b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(60))
    busy.close()
    assert all(gone(pid) for pid in pids)
    with pytest.raises(AuthError, match="stopping"):
        logon(pool)
    conf = str(samba.conf).encode()
    for proc in Path("/proc").iterdir():  # nothing of ours left under another pid either
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert not (b"ntlm_auth" in cmdline and conf in cmdline), proc.name


@pytest.mark.root
def test_helpers_inherit_no_fd_of_ours(pool: NtlmHelperPool) -> None:
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    try:
        ours = os.readlink(f"/proc/self/fd/{r}")  # pipe:[inode]
        logon(pool)
        [pid] = pool.live_pids
        theirs = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert ours not in theirs
    finally:
        os.close(r)
        os.close(w)


# ------------------------------------------------------------------ a fake helper

FAKE = r"""
import sys, time
script = dict(a.split("=", 1) for a in sys.argv[1:])
if script.get("start") == "deaf":
    time.sleep(60)
for line in sys.stdin:
    reply = script.get(line[:2], "BH unexpected request")
    if reply == "hang":
        time.sleep(60)
    if reply == "exit":
        sys.exit(0)
    sys.stdout.write(reply.replace("|", "\n") + "\n")
    sys.stdout.flush()
"""
CHALLENGE = b"NTLMSSP\x00\x02\x00\x00\x00" + bytes(40)
GOOD = {
    "YR": "TT " + base64.b64encode(CHALLENGE).decode(),
    "KK": "AF DOM\\user",
    "GK": "GK " + base64.b64encode(bytes(range(16))).decode(),
    "GF": "GF 0xe2088235",
}
NEGOTIATE = b"NTLMSSP\x00\x01\x00\x00\x00" + bytes(24)
AUTHENTICATE = b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(60)


def fake_pool(timeout: float = 5, separator: str = "\\", **replies: str) -> NtlmHelperPool:
    script = {**GOOD, **replies}
    argv = [sys.executable, "-c", FAKE, *[f"{k}={v}" for k, v in script.items()]]
    return NtlmHelperPool(argv, size=2, timeout=timeout, separator=separator)


def converse(pool: NtlmHelperPool) -> NtlmResult:
    acceptor = pool.acceptor()
    try:
        acceptor.negotiate(NEGOTIATE)
        return acceptor.authenticate(AUTHENTICATE)
    finally:
        acceptor.close()


def test_fake_good_conversation_parses_every_field() -> None:
    pool = fake_pool()
    try:
        assert converse(pool) == NtlmResult("DOM", "user", bytes(range(16)), 0xE2088235)
        assert converse(pool).flags == 0xE2088235
        assert pool.stats.spawned == 1
    finally:
        pool.close()


def test_fake_winbind_separator() -> None:
    pool = fake_pool(separator="+", KK="AF DOM+us\\er")
    try:
        assert (converse(pool).domain, converse(pool).account) == ("DOM", "us\\er")
    finally:
        pool.close()
    pool = fake_pool(KK="AF DOM+user")  # the pool expects "\": a clear refusal
    try:
        with pytest.raises(AuthError, match="winbind separator"):
            converse(pool)
    finally:
        pool.close()


BAD_REPLIES = {
    "bh-negotiate": {"YR": "BH broken"},
    "bh-authenticate": {"KK": "BH broken"},
    "tt-not-base64": {"YR": "TT !!!!"},
    "tt-not-a-challenge": {"YR": "TT " + base64.b64encode(NEGOTIATE).decode()},
    "tt-empty": {"YR": "TT"},
    "wrong-verb": {"YR": "AF DOM\\user"},
    "two-lines": {"YR": GOOD["YR"] + "|" + GOOD["YR"]},
    "af-no-user": {"KK": "AF DOM\\"},
    "af-no-separator": {"KK": "AF user"},
    "gk-short": {"GK": "GK " + base64.b64encode(bytes(15)).decode()},
    "gk-long": {"GK": "GK " + base64.b64encode(bytes(17)).decode()},
    "gk-bh": {"GK": "BH No session key"},
    "gf-decimal": {"GF": "GF 12345"},
    "gf-signed": {"GF": "GF -0x1"},
    "gf-underscore": {"GF": "GF 0x_1"},
    "gf-too-long": {"GF": "GF 0x123456789"},
    "gf-space": {"GF": "GF 0x1 "},
    "exit-negotiate": {"YR": "exit"},
    "exit-authenticate": {"GK": "exit"},
}


@pytest.mark.parametrize("replies", BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_fake_bad_reply_kills_the_helper(replies: dict[str, str]) -> None:
    pool = fake_pool(**replies)
    try:
        t0 = time.monotonic()
        with pytest.raises(AuthError) as info:
            converse(pool)
        assert time.monotonic() - t0 < 3, info.value
        assert "logon failed" not in str(info.value)
        stats = pool.stats
        assert (stats.spawned, stats.killed, stats.live) == (1, 1, 0)
    finally:
        pool.close()


def test_fake_na_keeps_the_helper() -> None:
    pool = fake_pool(KK="NA NT_STATUS_WRONG_PASSWORD")
    try:
        for _ in range(3):
            with pytest.raises(AuthError, match="logon failed: NT_STATUS_WRONG_PASSWORD"):
                converse(pool)
        stats = pool.stats
        assert (stats.spawned, stats.killed, stats.idle) == (1, 0, 1)
    finally:
        pool.close()


@pytest.mark.parametrize("leg", ["YR", "KK", "GK"])
def test_fake_silent_helper_times_out(leg: str) -> None:
    pool = fake_pool(timeout=0.5, **{leg: "hang"})
    try:
        t0 = time.monotonic()
        with pytest.raises(AuthError, match="did not answer within 0.5 s"):
            converse(pool)
        assert time.monotonic() - t0 < 3  # 0.5 s, then SIGTERM (Python dies at once)
        assert pool.stats.live == 0
    finally:
        pool.close()


def test_fake_deaf_helper_cannot_block_a_write() -> None:
    """A helper that never reads: a 64 KiB token (87 KiB of base64) overflows the pipe."""
    pool = fake_pool(timeout=0.5, start="deaf")
    try:
        t0 = time.monotonic()
        with pytest.raises(AuthError, match="did not read a request"):
            pool.acceptor().negotiate(b"N" * MAX_TOKEN)
        assert time.monotonic() - t0 < 3
        assert pool.stats.live == 0
    finally:
        pool.close()


def test_fake_close_from_another_thread_ends_a_waiting_leg() -> None:
    pool = fake_pool(timeout=30, YR="hang")
    acceptor = pool.acceptor()
    outcome: list[BaseException | bytes] = []

    def leg() -> None:
        try:
            outcome.append(acceptor.negotiate(NEGOTIATE))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=leg)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not pool.live_pids and time.monotonic() < deadline:
            time.sleep(0.01)
        [pid] = pool.live_pids
        time.sleep(0.2)  # the request is out, the leg waits for the reply
        t0 = time.monotonic()
        acceptor.close()  # e.g. the event loop tearing the connection down
        assert time.monotonic() - t0 < 0.5  # a signal, no waiting
        thread.join(5)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], AuthError)
        assert gone(pid) and pool.stats.live == 0 and pool.stats.idle == 0
    finally:
        pool.close()
        thread.join(5)


def test_fake_missing_program() -> None:
    pool = NtlmHelperPool(["/nonexistent/ntlm_auth", HELPER_PROTOCOL])
    try:
        with pytest.raises(AuthError, match="cannot start ntlm_auth"):
            pool.acceptor().negotiate(NEGOTIATE)
    finally:
        pool.close()


@pytest.mark.root
def test_idle_helpers_are_ended_after_the_idle_time(pool: NtlmHelperPool) -> None:
    """Memory is for bursts: a helper idle past ``idle_seconds`` is ended, the next
    logon starts a new one."""
    logon(pool)
    [pid] = pool.idle_pids
    assert pool.trim() == 0, "a helper idle for less than idle_seconds stays"
    assert pool.trim(now=time.monotonic() + pool.idle_seconds + 1) == 1
    assert pool.idle_pids == [] and pool.stats.live == 0
    assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)
    result, _ = logon(pool)
    assert result.account == "root" and pool.idle_pids != [pid]


def _zombie_or_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"
