"""The ntlm_auth helper pool against a real private winbindd and Samba's passdb.

pyspnego is the NTLM client; Samba's ``ntlm_auth`` (squid-2.5-ntlmssp) is the
server side the agent uses.  Checks: the session key and flags the agent signs
with, reuse after a failed logon, abandoned conversations, garbage, threads,
and that closing the pool leaves no helper running.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import spnego

from remotevss.agent.ntlm_auth import NtlmHelperPool
from remotevss.agent.rpc_security import HELPER_PROTOCOL
from remotevss.dcerpc.connection import AuthError
from remotevss.samba.private import PASSWORD, PrivateSamba

TOOLS = ("smbd", "winbindd", "ntlm_auth", "unshare", "smbpasswd")
_missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (winbindd, mount namespace)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba tools: {_missing}"),
]
NEEDED_FLAGS = 0x10 | 0x20 | 0x80000 | 0x20000000  # sign, seal, ESS, 128-bit


@pytest.fixture(scope="module")
def samba(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSamba]:
    root = tmp_path_factory.mktemp("ntlmpool")
    (root / "share").mkdir()
    s = PrivateSamba(root / "samba", {"share": root / "share"}, samba_fsrvp=False, winbind=True,
                     share_options={"share": {"vfs objects": ""}})  # fmt: skip
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def pool(samba: PrivateSamba) -> Iterator[NtlmHelperPool]:
    p = NtlmHelperPool(
        [*samba.ntlm_auth_argv, HELPER_PROTOCOL, f"--configfile={samba.conf}"], size=2, timeout=5
    )
    try:
        yield p
    finally:
        p.close()


def logon(pool: NtlmHelperPool, user: str = "ANCHORFS\\root", password: str = PASSWORD) -> tuple[object, bytes]:
    client = spnego.client(user, password, protocol="ntlm")
    acceptor = pool.acceptor()
    try:
        challenge = acceptor.negotiate(client.step() or b"")
        result = acceptor.authenticate(client.step(challenge) or b"")
    finally:
        acceptor.close()
    return result, client.session_key


def test_good_logon_yields_the_clients_session_key(pool: NtlmHelperPool) -> None:
    result, key = logon(pool)
    assert (result.domain.upper(), result.account) == ("ANCHORFS", "root")  # type: ignore[attr-defined]
    assert result.session_key == key  # type: ignore[attr-defined]
    assert result.flags & NEEDED_FLAGS == NEEDED_FLAGS  # type: ignore[attr-defined]


def test_wrong_password_is_refused_and_the_helper_reused(pool: NtlmHelperPool) -> None:
    with pytest.raises(AuthError, match="logon failed"):
        logon(pool, password="wrong")
    logon(pool)
    assert pool.spawned == 1 and pool.idle == 1  # one helper served both conversations


def test_abandoned_conversation_then_a_good_one(pool: NtlmHelperPool) -> None:
    client = spnego.client("ANCHORFS\\root", PASSWORD, protocol="ntlm")
    acceptor = pool.acceptor()
    acceptor.negotiate(client.step() or b"")
    acceptor.close()  # the client went away after the challenge
    logon(pool)


@pytest.mark.parametrize(
    "token",
    [b"\x00" * 40, b"NTLMSSP\x00\x03\x00\x00\x00" + b"\xff" * 60, os.urandom(200)],
    ids=["zeros", "bad-authenticate", "random"],
)
def test_garbage_authenticate_is_refused_quickly(pool: NtlmHelperPool, token: bytes) -> None:
    client = spnego.client("ANCHORFS\\root", PASSWORD, protocol="ntlm")
    acceptor = pool.acceptor()
    acceptor.negotiate(client.step() or b"")
    t0 = time.monotonic()
    with pytest.raises(AuthError):
        acceptor.authenticate(token)
    acceptor.close()
    assert time.monotonic() - t0 < 5  # the helper's timeout, never a hang
    logon(pool)  # and the pool still works


def test_empty_and_oversized_tokens_never_reach_the_helper(pool: NtlmHelperPool) -> None:
    for token in (b"", b"N" * (64 * 1024 + 1)):
        acceptor = pool.acceptor()
        with pytest.raises(AuthError, match="refused"):
            acceptor.negotiate(token)
        acceptor.close()


def test_parallel_conversations(pool: NtlmHelperPool) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(3):
                logon(pool)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert pool.idle <= 2  # at most `size` kept


def test_close_leaves_no_helper(samba: PrivateSamba) -> None:
    pool = NtlmHelperPool([*samba.ntlm_auth_argv, HELPER_PROTOCOL, f"--configfile={samba.conf}"])
    logon(pool)
    pids = pool.live_pids
    assert pids
    pool.close()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    with pytest.raises(AuthError, match="stopping"):
        pool.acceptor().negotiate(b"NTLMSSP\0\1\0\0\0" + bytes(24))
