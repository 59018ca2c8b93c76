"""NTLM verified by Samba: a pool of ``ntlm_auth --helper-protocol=squid-2.5-ntlmssp`` processes.

Why: Samba's NTLMSSP server (MIC, timestamps, NTLMv2 checks) runs in the
helper and the password check goes to winbindd (Samba's passdb on a
standalone server, the DC on a member); the agent sees neither hash nor
password, only the exported session key and the negotiated flags it needs to
sign and seal.  One helper serves one conversation at a time and many one
after another (``YR`` starts afresh), so idle helpers are kept for the next
binds.

Protocol, one line each way: ``YR <negotiate>`` -> ``TT <challenge>``;
``KK <authenticate>`` -> ``AF DOMAIN\\user`` or ``NA <status>``; then ``GK``
-> ``GK <session key>`` and ``GF`` -> ``GF <hex flags>``.  ``BH`` = broken
helper.  Every reply is checked strictly; a helper that is slow, dies or
says anything unexpected is killed, never reused.

Blocking by design: the DCE/RPC transport runs authentication legs in a
worker thread (``dispatch.serve_connection``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from remotevss.dcerpc.connection import AuthError
from remotevss.linepipe import LinePipe

log = logging.getLogger("remotevss.agent.ntlm_auth")

MAX_TOKEN = 64 * 1024
MAX_LINE = 4 * MAX_TOKEN
#: winbindd on a standalone server checks only users of its own SAM domain (the
#: netbios name); a client naming the workgroup or no domain is sent to a DC.
STANDALONE_HINT = (
    " (a standalone server authenticates only SERVER\\user: the client named another"
    " domain; see docs/security.md)"
)


@dataclass(frozen=True)
class NtlmResult:
    domain: str
    account: str
    session_key: bytes
    flags: int


class _Helper:
    """One ntlm_auth process and its line-buffered stdout."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin
        self._out = LinePipe(self.proc.stdout.fileno(), MAX_LINE)
        self.conversations = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, line: str, timeout: float) -> str:
        try:
            self._in.write(line.encode("ascii") + b"\n")
            self._in.flush()
        except (BrokenPipeError, OSError) as exc:
            raise AuthError(f"ntlm_auth helper gone: {exc}") from exc
        try:
            raw = self._out.read_line(timeout)
        except TimeoutError as exc:
            raise AuthError(f"ntlm_auth did not answer within {timeout:g} s") from exc
        except (EOFError, ValueError, OSError) as exc:
            raise AuthError(f"ntlm_auth helper failed: {exc}") from exc
        if self._out.pending:  # one request, one line: anything more is out of step
            raise AuthError("ntlm_auth answered more than one line")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AuthError("ntlm_auth answered undecodable bytes") from exc

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._in.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def _b64(token: bytes) -> str:
    if not token or len(token) > MAX_TOKEN:
        raise AuthError(f"NTLM token of {len(token)} bytes refused")
    return base64.b64encode(token).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise AuthError(f"ntlm_auth sent a malformed {what}") from exc


def _reply(line: str, expected: str) -> str:
    kind, _, rest = line.partition(" ")
    if kind == expected and rest:
        return rest
    if kind == "NA":
        hint = STANDALONE_HINT if "NO_LOGON_SERVERS" in rest else ""
        raise AuthError(f"NTLM logon failed: {rest or 'refused'}{hint}")
    if kind == "BH":
        raise AuthError(f"ntlm_auth broken: {rest or 'no reason'}")
    raise AuthError(f"ntlm_auth answered {kind[:16]!r}, expected {expected}")


class WinbindNtlmAcceptor:
    """One NTLMSSP conversation on a pooled helper (``NtlmAcceptor`` of rpc_auth)."""

    def __init__(self, pool: NtlmHelperPool) -> None:
        self._pool = pool
        self._helper: _Helper | None = None

    def negotiate(self, token: bytes) -> bytes:
        if self._helper is not None:
            raise AuthError("NTLM negotiate sent twice")
        self._helper = self._pool._take()
        challenge = _unb64(self._ask(f"YR {_b64(token)}", "TT"), "challenge")
        if not challenge.startswith(b"NTLMSSP\0"):
            raise self._broken("ntlm_auth sent no NTLMSSP challenge")
        return challenge

    def authenticate(self, token: bytes) -> NtlmResult:
        if self._helper is None:
            raise AuthError("NTLM authenticate before negotiate")
        try:
            user = self._ask(f"KK {_b64(token)}", "AF")
        except AuthError as exc:
            if str(exc).startswith("NTLM logon failed"):  # the helper is fine: reuse it
                self._release(reuse=True)
            raise
        domain, sep, account = user.partition("\\")
        if not sep or not domain or not account:
            raise self._broken(f"ntlm_auth named no DOMAIN\\user: {user[:80]!r}")
        key = _unb64(self._ask("GK", "GK"), "session key")
        if len(key) != 16:
            raise self._broken("ntlm_auth sent a session key that is not 16 bytes")
        flags_text = self._ask("GF", "GF")
        try:
            flags = int(flags_text, 16)
        except ValueError as exc:
            raise self._broken(f"ntlm_auth sent bad flags {flags_text[:20]!r}") from exc
        self._release(reuse=True)
        return NtlmResult(domain, account, key, flags)

    def close(self) -> None:
        """Abandoned mid-conversation: the next ``YR`` would reset it, but a helper
        in an unknown state is not worth keeping."""
        self._release(reuse=False)

    def _ask(self, line: str, expected: str) -> str:
        assert self._helper is not None
        try:
            answer = self._helper.ask(line, self._pool.timeout)
        except AuthError as exc:
            raise self._broken(str(exc)) from exc
        try:
            return _reply(answer, expected)
        except AuthError as exc:
            if not str(exc).startswith("NTLM logon failed"):
                raise self._broken(str(exc)) from exc
            raise

    def _broken(self, message: str) -> AuthError:
        log.warning("ntlm_auth helper dropped: %s", message)
        self._release(reuse=False)
        return AuthError(message)

    def _release(self, *, reuse: bool) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.conversations += 1
            self._pool._give_back(helper, reuse)


class NtlmHelperPool:
    """Idle ntlm_auth helpers, spawned on demand, at most ``size`` kept; thread-safe."""

    def __init__(self, argv: Sequence[str], *, size: int = 4, timeout: float = 10.0) -> None:
        self.argv = list(argv)
        self.size = size
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[_Helper] = []
        self._busy: set[_Helper] = set()
        self._closed = False
        self.spawned = 0
        self.killed = 0

    def acceptor(self) -> WinbindNtlmAcceptor:
        return WinbindNtlmAcceptor(self)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def live_pids(self) -> list[int]:
        with self._lock:
            return [h.pid for h in [*self._idle, *self._busy]]

    def _take(self) -> _Helper:
        with self._lock:
            if self._closed:
                raise AuthError("the agent is stopping")
            while self._idle:
                helper = self._idle.pop()
                if helper.proc.poll() is None:
                    self._busy.add(helper)
                    return helper
                self.killed += 1
        try:
            helper = _Helper(self.argv)
        except OSError as exc:
            raise AuthError(f"cannot start ntlm_auth ({self.argv[0]}): {exc}") from exc
        with self._lock:
            self.spawned += 1
            self._busy.add(helper)
        return helper

    def _give_back(self, helper: _Helper, reuse: bool) -> None:
        with self._lock:
            self._busy.discard(helper)
            keep = reuse and not self._closed and len(self._idle) < self.size
            if keep and helper.proc.poll() is None:
                self._idle.append(helper)
                return
            self.killed += 1
        helper.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            helpers = [*self._idle, *self._busy]
            self._idle.clear()
            self._busy.clear()
        for helper in helpers:
            helper.kill()
