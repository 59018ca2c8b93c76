"""NTLM verified by Samba: a pool of ``ntlm_auth --helper-protocol=squid-2.5-ntlmssp`` processes.

Why: Samba's NTLMSSP server (MIC, timestamps, NTLMv2 checks) runs in the
helper and the password check goes to winbindd (Samba's passdb on a
standalone server, the DC on a member); the agent sees neither hash nor
password, only the exported session key and the negotiated flags it needs to
sign and seal.  One helper serves one conversation at a time and many one
after another (``YR`` starts afresh, even mid-conversation), so idle helpers
are kept for the next binds.

Protocol, one line each way: ``YR <negotiate>`` -> ``TT <challenge>``;
``KK <authenticate>`` -> ``AF DOMAIN\\user`` or ``NA <status>``; then ``GK``
-> ``GK <session key>`` and ``GF`` -> ``GF 0x<hex flags>``.  ``BH`` = broken
helper.  The separator in ``AF`` is smb.conf's ``winbind separator``
(``\\`` by default, often ``+`` on domain members).  Every reply is checked
strictly; a helper that is slow, dies or says anything unexpected is killed,
never reused.  ``NA`` is a well-formed refusal (bad password, malformed
token): that helper is reused, and the next conversation starts with ``YR``.

Blocking by design: the DCE/RPC transport runs authentication legs in a
worker thread (``dispatch.serve_connection``).  Each request has one deadline
covering both the write and the reply.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import selectors
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from remotevss.dcerpc.connection import AuthError
from remotevss.dcerpc.ntlm_crypto import KEY_EXCH, SEAL, SIGN, rc4k
from remotevss.dcerpc.ntlm_msg import AV_FLAG_MIC, Authenticate, Challenge, av_flags
from remotevss.linepipe import LinePipe, stop_process

log = logging.getLogger("remotevss.agent.ntlm_auth")

MAX_TOKEN = 64 * 1024
MAX_LINE = 4 * MAX_TOKEN
KILL_AFTER = 2.0  # seconds between SIGTERM and SIGKILL
_FLAGS = re.compile(r"0x[0-9a-fA-F]{1,8}")
_NTLMSSP_CHALLENGE = b"NTLMSSP\0\x02\0\0\0"
#: winbindd sends a user of a domain other than the local SAM (the netbios name)
#: to a domain controller; without one it answers NT_STATUS_NO_LOGON_SERVERS.  A
#: standalone agent maps such names to the local SAM itself (LocalSamLogon), so
#: this is a member whose DC winbindd cannot reach (or a name it cannot route).
NO_DC_HINT = (
    " (winbindd reached no domain controller for the client's domain: check that"
    " winbindd reaches the DC; see docs/security.md)"
)


@dataclass(frozen=True)
class NtlmResult:
    domain: str  # "ANCHORFS"
    account: str  # "root"
    session_key: bytes  # 16 bytes, from GK
    flags: int  # negotiated NTLMSSP flags, from GF


@dataclass(frozen=True)
class PoolStats:
    spawned: int  # helpers started so far
    killed: int  # helpers ended (broken, abandoned, surplus, dead)
    live: int  # helpers running now (idle + busy)
    idle: int  # helpers waiting for a conversation


class _LogonFailed(AuthError):
    """``NA``: the helper refused the token or the credentials and is fine to reuse."""


class _Helper:
    """One ntlm_auth process, its non-blocking stdin and line-buffered stdout."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        os.set_blocking(self._in, False)
        self._out = LinePipe(self.proc.stdout.fileno(), MAX_LINE)
        self.conversations = 0
        self.doomed = False  # killed by a close() from another thread: never reuse
        self.idle_since = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, line: str, timeout: float) -> str:
        """Send one request line, return the one reply line; AuthError on anything else."""
        deadline = time.monotonic() + timeout
        data = memoryview(line.encode("ascii") + b"\n")
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._in, selectors.EVENT_WRITE)
                while data:
                    left = deadline - time.monotonic()
                    if left <= 0 or not sel.select(left):
                        raise AuthError(f"ntlm_auth did not read a request within {timeout:g} s")
                    with contextlib.suppress(BlockingIOError):
                        data = data[os.write(self._in, data) :]
        except OSError as exc:  # BrokenPipeError: the helper is gone
            raise AuthError(f"ntlm_auth helper gone: {exc}") from exc
        try:
            raw = self._out.read_line(max(deadline - time.monotonic(), 0.001))
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

    def stop(self) -> None:
        """End the process (SIGTERM, SIGKILL after KILL_AFTER s) and reap it; the pipes
        stay open: another thread may still be reading them (see :meth:`kill`)."""
        stop_process(self.proc, KILL_AFTER)

    def kill(self) -> None:
        """Stop the process and close its pipes (by the thread that owns the helper)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # EOF: ntlm_auth exits by itself
        self.stop()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()


def _b64(token: bytes) -> str:
    if not token or len(token) > MAX_TOKEN:
        raise AuthError(f"NTLM token of {len(token)} bytes refused (1 to {MAX_TOKEN} bytes)")
    return base64.b64encode(token).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise AuthError(f"ntlm_auth sent a malformed {what}") from exc


def _reply(line: str, expected: str) -> str:
    """The argument of a reply ``EXPECTED <arg>``; _LogonFailed for ``NA``, AuthError else."""
    kind, sep, rest = line.partition(" ")
    if kind == expected and sep and rest and rest.isprintable():
        return rest
    if kind == "NA":
        hint = NO_DC_HINT if "NO_LOGON_SERVERS" in rest else ""
        raise _LogonFailed(f"NTLM logon failed: {rest[:80] or 'refused'}{hint}")
    if kind == "BH":
        raise AuthError(f"ntlm_auth broken: {rest[:80] or 'no reason'}")
    raise AuthError(f"ntlm_auth answered {line[:24]!r}, expected {expected} <argument>")


class WinbindNtlmAcceptor:
    """One NTLMSSP conversation on a pooled helper (``NtlmAcceptor`` of rpc_auth).

    The legs (negotiate, authenticate) come one after another from any thread.
    :meth:`close` may come from another thread while a leg waits for the helper
    (a connection torn down meanwhile): it then only kills the helper process,
    and the leg fails and drops it.
    """

    def __init__(self, pool: NtlmHelperPool) -> None:
        self._pool = pool
        self._guard = threading.Lock()  # _helper, _state, _in_flight against close()
        self._helper: _Helper | None = None
        self._state = "new"  # new | challenged | done | closed
        self._in_flight = False
        self._negotiate = b""  # both kept for a local SAM logon's MIC (LocalSamLogon)
        self._challenge = b""

    def negotiate(self, token: bytes) -> bytes:
        """NEGOTIATE -> CHALLENGE."""
        self._begin("new")
        try:
            request = f"YR {_b64(token)}"  # refused tokens never cost a helper
            helper = self._pool._take()
            with self._guard:
                self._helper = helper  # closed meanwhile: _end() gives it back
                if self._state == "closed":
                    raise AuthError("NTLM conversation closed")
            challenge = _unb64(self._ask(request, "TT"), "challenge")
            if not challenge.startswith(_NTLMSSP_CHALLENGE):
                raise self._broken("ntlm_auth sent no NTLMSSP challenge")
            with self._guard:
                if self._state == "closed":
                    raise AuthError("NTLM conversation closed")
                self._state = "challenged"
            self._negotiate, self._challenge = token, challenge
            return challenge
        finally:
            self._end()

    def authenticate(self, token: bytes) -> NtlmResult:
        """AUTHENTICATE -> the logon; the helper goes back to the pool either way."""
        self._begin("challenged")
        try:
            try:
                request = f"KK {_b64(token)}"
                local = self._pool.local_sam
                if local is not None and local.handles(token):
                    # smbd's mapping: the local SAM, not winbindd (LocalSamLogon)
                    self._release(reuse=True)  # never sent KK: the next YR resets it
                    return local.logon(self._negotiate, self._challenge, token)
            except AuthError:
                self._release(reuse=True)  # never sent: the next YR resets the helper
                raise
            user = self._ask(request, "AF")
            sep = self._pool.separator
            domain, found, account = user.partition(sep)
            if not found or not domain or not account:
                raise self._broken(
                    f"ntlm_auth named no DOMAIN{sep}user: {user[:80]!r}"
                    " (is the pool's separator smb.conf's winbind separator?)"
                )
            key = _unb64(self._ask("GK", "GK"), "session key")
            if len(key) != 16:
                raise self._broken(f"ntlm_auth sent a session key of {len(key)} bytes, not 16")
            flags_text = self._ask("GF", "GF")
            if not _FLAGS.fullmatch(flags_text):
                raise self._broken(f"ntlm_auth sent bad flags {flags_text[:20]!r}")
            self._release(reuse=True)
            return NtlmResult(domain, account, key, int(flags_text, 16))
        finally:
            self._end()

    def close(self) -> None:
        """Idempotent.  Abandoned after negotiate: the next ``YR`` would reset the
        helper, but one whose client went away mid-conversation is not kept."""
        with self._guard:
            self._state = "closed"
            helper = self._helper
            if helper is None:
                return
            if self._in_flight:  # a leg waits on it in another thread: end the process,
                helper.doomed = True  # the leg sees EOF and drops the helper
                with contextlib.suppress(OSError):
                    helper.proc.kill()  # a signal, no wait: close() may run on an event loop
                return
        self._release(reuse=False)

    def _begin(self, expected: str) -> None:
        with self._guard:
            if self._state != expected:
                raise AuthError(f"NTLM conversation out of order ({self._state})")
            self._state = "done"  # until the leg succeeds: any failure ends it
            self._in_flight = True

    def _end(self) -> None:
        with self._guard:
            self._in_flight = False
            orphan = self._state == "closed" and self._helper is not None
        if orphan:  # closed while the leg ran
            self._release(reuse=False)

    def _ask(self, line: str, expected: str) -> str:
        """One exchange; the helper is released on any failure (reused after ``NA``)."""
        helper = self._helper
        if helper is None:  # only after a close() from another thread
            raise AuthError("NTLM conversation closed")
        try:
            return _reply(helper.ask(line, self._pool.timeout), expected)
        except _LogonFailed:
            self._release(reuse=True)
            raise
        except AuthError as exc:
            raise self._broken(str(exc)) from exc

    def _broken(self, message: str) -> AuthError:
        log.warning("ntlm_auth helper dropped: %s", message)
        self._release(reuse=False)
        return AuthError(message)

    def _release(self, *, reuse: bool) -> None:
        with self._guard:
            helper, self._helper = self._helper, None
        if helper is not None:
            helper.conversations += 1
            self._pool._give_back(helper, reuse and not helper.doomed)


class NtlmHelperPool:
    """Idle ntlm_auth helpers, spawned on demand, at most ``size`` kept; thread-safe.
    How many run at once is the agent's :class:`~remotevss.agent.auth_gate.AuthGate`'s
    business (one helper per authenticating connection).

    ``argv`` is the whole helper command line (``[..., "ntlm_auth",
    "--helper-protocol=squid-2.5-ntlmssp", "--configfile=..."]``); ``timeout``
    bounds each request/reply; ``separator`` is smb.conf's ``winbind separator``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        size: int = 4,
        timeout: float = 10.0,
        separator: str = "\\",
        local_sam: LocalSamLogon | None = None,
        idle_seconds: float = 30.0,
    ) -> None:
        if not argv:
            raise ValueError("ntlm_auth: empty command line")
        if len(separator) != 1:
            raise ValueError(f"winbind separator must be one character, not {separator!r}")
        self.argv = list(argv)
        self.size = size
        self.timeout = timeout
        self.separator = separator
        self.local_sam = local_sam
        #: An idle helper is ended after this long (0: kept): each holds ~16 MB, a
        #: backup window's binds come in bursts, hours apart, and a new helper
        #: starts in tens of milliseconds.
        self.idle_seconds = idle_seconds
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
        with self._lock:
            return len(self._idle)

    @property
    def live_pids(self) -> list[int]:
        with self._lock:
            return [h.pid for h in [*self._idle, *self._busy]]

    @property
    def idle_pids(self) -> list[int]:
        """Idle helpers, the next one to be used last."""
        with self._lock:
            return [h.pid for h in self._idle]

    @property
    def stats(self) -> PoolStats:
        with self._lock:
            live = len(self._idle) + len(self._busy)
            return PoolStats(self.spawned, self.killed, live, len(self._idle))

    def _take(self) -> _Helper:
        dead: list[_Helper] = []
        try:
            with self._lock:
                if self._closed:
                    raise AuthError("the agent is stopping")
                while self._idle:
                    helper = self._idle.pop()
                    if helper.proc.poll() is None:
                        self._busy.add(helper)
                        return helper
                    self.killed += 1
                    dead.append(helper)
        finally:
            for helper in dead:
                helper.kill()  # already exited: closes its pipes
        try:
            helper = _Helper(self.argv)
        except OSError as exc:
            raise AuthError(f"cannot start ntlm_auth ({self.argv[0]}): {exc}") from exc
        with self._lock:
            self.spawned += 1
            if not self._closed:
                self._busy.add(helper)
                return helper
            self.killed += 1
        helper.kill()  # the pool closed while it started
        raise AuthError("the agent is stopping")

    def _give_back(self, helper: _Helper, reuse: bool) -> None:
        with self._lock:
            self._busy.discard(helper)
            keep = reuse and not self._closed and len(self._idle) < self.size
            if keep and helper.proc.poll() is None:
                helper.idle_since = time.monotonic()
                self._idle.append(helper)
                return
            self.killed += 1
        helper.kill()

    def trim_due(self, now: float | None = None) -> bool:
        """Whether :meth:`trim` would end a helper (cheap: no process is touched)."""
        if self.idle_seconds <= 0:
            return False
        cutoff = (time.monotonic() if now is None else now) - self.idle_seconds
        with self._lock:
            return any(h.idle_since < cutoff for h in self._idle)

    def trim(self, now: float | None = None) -> int:
        """End the helpers idle for longer than ``idle_seconds``; how many were ended."""
        if self.idle_seconds <= 0:
            return 0
        cutoff = (time.monotonic() if now is None else now) - self.idle_seconds
        with self._lock:
            old = [h for h in self._idle if h.idle_since < cutoff]
            self._idle = [h for h in self._idle if h.idle_since >= cutoff]
            self.killed += len(old)
        for helper in old:
            helper.kill()
        return len(old)

    def close(self) -> None:
        """Terminate every helper (SIGKILL after 2 s) and wait for them.  Busy helpers
        are ended but their pipes are left to the conversation that owns them, whose
        next request fails and releases them."""
        with self._lock:
            self._closed = True
            idle, busy = list(self._idle), list(self._busy)
            self._idle.clear()
            self.killed += len(idle)
        for helper in idle:
            helper.kill()
        for helper in busy:
            helper.stop()


class LocalSamLogon:
    """NTLM logons smbd would map to the local SAM, checked in :mod:`remotevss.samba.sam_logon`.

    Why: a standalone smbd treats ``WORKGROUP\\user``, ``\\user`` and any domain
    other than its netbios name as its own SAM's user (smbd's ``auth`` maps the
    name, then checks the response with the domain the client hashed); winbindd
    would send them to a domain controller that does not exist.  Only on a
    standalone server: on a member every name goes to winbindd, as smbd's do.
    The child returns the user session key, as winbindd does; the exported key,
    the MIC and the flags are worked out here from the three messages.
    """

    def __init__(self, config_file: str, netbios_name: str, *, timeout: float = 10.0,
                 argv: Sequence[str] | None = None) -> None:  # fmt: skip
        self.config_file = config_file
        self.netbios_name = netbios_name.upper()
        self.timeout = timeout
        self.argv = list(argv or [sys.executable, "-m", "remotevss.samba.sam_logon"])

    def handles(self, authenticate: bytes) -> bool:
        """True for a named user whose domain is not this server's netbios name."""
        try:
            auth = Authenticate.unpack(authenticate)
            user, domain = auth.user_name or "", auth.domain_name or ""
        except (ValueError, struct.error):  # malformed: ntlm_auth refuses it with a status
            return False
        return bool(user) and domain.upper() != self.netbios_name

    def logon(self, negotiate: bytes, challenge: bytes, authenticate: bytes) -> NtlmResult:
        try:
            auth = Authenticate.unpack(authenticate)
            chal = Challenge.unpack(challenge)
            user, domain = auth.user_name or "", auth.domain_name or ""
            nt_response = auth.nt_challenge_response or b""
            flags_av = av_flags(nt_response) if len(nt_response) > 24 else 0
        except (ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
            raise _LogonFailed("NTLM logon failed: malformed AUTHENTICATE message") from exc
        if len(user) > 256 or len(domain) > 256:
            raise _LogonFailed("NTLM logon failed: user or domain name too long")
        answer = self._ask({
            "config": self.config_file, "user": user, "domain": domain,
            "challenge": chal.server_challenge.hex(), "nt_response": nt_response.hex(),
        })  # fmt: skip
        if not answer.get("ok"):
            status = str(answer.get("status", "NT_STATUS_LOGON_FAILURE"))[:80]
            raise _LogonFailed(f"NTLM logon failed: {status} ({domain}\\{user}, local SAM)")
        try:
            base_key = bytes.fromhex(str(answer["user_session_key"]))
            account, sam = str(answer["account"]), str(answer["domain"])
        except (KeyError, ValueError) as exc:
            raise AuthError("sam_logon answered without a session key") from exc
        flags = auth.flags & chal.flags
        key = base_key  # NTLMv2: the key exchange key is the session base key
        if flags & KEY_EXCH and flags & (SIGN | SEAL):
            key = rc4k(base_key, auth.encrypted_random_session_key)
        if flags_av & AV_FLAG_MIC:
            try:
                sent, covered = auth.mic, auth.without_mic()
            except ValueError as exc:
                raise _LogonFailed("NTLM logon failed: AUTHENTICATE without its MIC") from exc
            mic = hmac.new(key, negotiate + challenge + covered, hashlib.md5).digest()
            if not hmac.compare_digest(mic, sent):
                raise _LogonFailed(f"NTLM logon failed: bad MIC ({domain}\\{user}, local SAM)")
        log.info("NTLM %s\\%s checked against the local SAM as %s\\%s", domain, user, sam, account)
        return NtlmResult(sam, account, key, flags)

    def _ask(self, request: dict[str, str]) -> dict[str, object]:
        try:
            done = subprocess.run(
                self.argv, input=json.dumps(request) + "\n", capture_output=True, text=True,
                timeout=self.timeout, check=False, close_fds=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise AuthError(f"local SAM logon did not answer within {self.timeout:g} s") from exc
        except OSError as exc:
            raise AuthError(f"cannot start the local SAM logon ({self.argv[0]}): {exc}") from exc
        try:
            answer = json.loads(done.stdout.splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise AuthError(f"local SAM logon failed: {tail[0][:200]}") from exc
        if not isinstance(answer, dict):
            raise AuthError("local SAM logon answered something else than an object")
        return answer
