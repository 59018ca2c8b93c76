"""Registry share writes and smbd notifications in a recycled child process.

Why: two C bindings of python3-samba 4.17 leak memory on every call the agent
makes per exposed shadow copy.  Registry share writes (libsmbconf) leak ~1.35
KB each, and each ``samba.messaging.Messaging`` context leaks ~1.1 KB.  Over
years that is the agent's memory (RELIABILITY.md §5).  A child process makes
those calls instead and is replaced after ``max_ops`` of them, so the leak is
bounded by what one child accumulates and the agent's RSS stays flat.

The child runs only while there is work: it exits after ``idle_exit``
seconds without an operation (its ~20-30 MB of python-samba are the largest
part of the agent's resident set when idle) and is started again by the next
operation, or ahead of it by :meth:`SambaWorker.warm` (the agent calls it when
a shadow copy set starts, so the child has loaded Samba's libraries by the
time Expose needs it).

Safety:
- The child dies with the agent (PR_SET_PDEATHSIG), so a registry transaction
  can never complete after an agent crash, behind the back of the next agent's
  reconciliation.
- tdb transactions roll back when their writer dies.
- Reads of existing registry shares come here too: python-samba's
  ``get_share`` leaks ~1.3 KB per share returned.

Protocol: one JSON object per line each way.  Requests:
- ``{"op": "write", "name", "params": [[k, v], ...]}``
- ``{"op": "delete", "name"}``
- ``{"op": "write_many", "shares": [[name, [[k, v], ...]], ...]}`` (one transaction)
- ``{"op": "delete_many", "names": [...]}`` (one transaction)
- ``{"op": "get", "name"}`` (a registry share's name and parameters, or null)
- ``{"op": "notify", "force_tdis": [...], "conf_updated": bool}``

Replies: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from remotevss.linepipe import LinePipe
from remotevss.samba.conf import SBC_ERR_NO_SUCH_SERVICE

log = logging.getLogger("remotevss.samba")

PR_SET_PDEATHSIG = 1
MAX_LINE = 1 << 20
IDLE_EXIT = 30.0  # seconds without an operation before the child exits


class WorkerError(RuntimeError):
    """The worker refused or failed an operation, or is gone."""


class SambaWorker:
    """The agent's side: one child at a time, replaced every ``max_ops`` operations."""

    def __init__(
        self,
        config_file: str,
        *,
        max_ops: int = 5000,
        timeout: float = 30.0,
        idle_exit: float | None = IDLE_EXIT,
    ) -> None:
        self.config_file = config_file
        self.max_ops = max_ops
        self.timeout = timeout
        self.idle_exit = idle_exit
        self._idle_timer: threading.Timer | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ops = 0
        self._out: LinePipe | None = None
        self._lock = threading.Lock()
        self.spawned = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def write_share(self, name: str, params: list[tuple[str, str]]) -> None:
        self.call({"op": "write", "name": name, "params": [list(p) for p in params]})

    def delete_share(self, name: str) -> None:
        self.call({"op": "delete", "name": name})

    def write_shares(self, shares: list[tuple[str, list[tuple[str, str]]]]) -> None:
        self.call({"op": "write_many",
                   "shares": [[name, [list(p) for p in params]] for name, params in shares]})

    def delete_shares(self, names: list[str]) -> None:
        self.call({"op": "delete_many", "names": list(names)})

    def get_share(self, name: str) -> tuple[str, list[tuple[str, str]]] | None:
        """A registry share as stored, or None (SambaConf.registry_reader)."""
        found = self.call({"op": "get", "name": name})
        if found is None:
            return None
        return str(found[0]), [(str(k), str(v)) for k, v in found[1]]

    def notify(self, *, force_tdis: list[str] | tuple[str, ...] = (),
               conf_updated: bool = True) -> int:  # fmt: skip
        result = self.call(
            {"op": "notify", "force_tdis": list(force_tdis), "conf_updated": conf_updated}
        )
        return int(result or 0)

    def call(self, request: dict[str, Any]) -> Any:
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                assert self._out is not None
                reply = json.loads(self._out.read_line(self.timeout))
            except (OSError, ValueError, EOFError, TimeoutError) as exc:
                self._stop(kill=True)
                raise WorkerError(f"Samba worker failed on {request.get('op')}: {exc}") from exc
            self._ops += 1
            if self._ops >= self.max_ops:
                # recycle; the fresh child starts now, so it has loaded Samba's
                # libraries (~0.12 s) by the time the next call comes
                self._stop(kill=False)
                self._ensure()
            self._arm_idle()
        if not isinstance(reply, dict) or "ok" not in reply:
            raise WorkerError("Samba worker sent a malformed reply")
        if not reply["ok"]:
            raise WorkerError(str(reply.get("error", "unknown error")))
        return reply.get("result")

    def start(self) -> None:
        """Start the child now rather than on the first call (agent start-up)."""
        with self._lock:
            self._ensure()
            self._arm_idle()

    def warm(self) -> None:
        """Have a child ready soon, without waiting for it (a set has started)."""
        if self.pid is None:
            threading.Thread(target=self.start, name="samba-worker-warm", daemon=True).start()
        else:
            with self._lock:
                self._arm_idle()

    def close(self) -> None:
        with self._lock:
            self._cancel_idle()
            self._stop(kill=False)

    def _arm_idle(self) -> None:
        """(Re)start the idle countdown; call with the lock held."""
        self._cancel_idle()
        if self.idle_exit is None:
            return
        self._idle_timer = threading.Timer(self.idle_exit, self._idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle(self) -> None:
        with self._lock:
            if threading.current_thread() is not self._idle_timer:
                return  # re-armed or cancelled meanwhile (fired as it was replaced)
            self._idle_timer = None
            if self._proc is not None:
                log.debug("Samba worker idle for %.0f s: stopping it", self.idle_exit)
                self._stop(kill=False)

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop(kill=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "remotevss.samba.worker", self.config_file, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self._proc.stdout is not None
        self._out = LinePipe(self._proc.stdout.fileno(), MAX_LINE)
        self._ops = 0
        self.spawned += 1
        return self._proc

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        if kill and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            assert proc.stdout is not None
            proc.stdout.close()


# ---------------------------------------------------------------- the child


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)


class SambaOps:
    """The operations themselves, in the calling process: what the worker child runs
    for the agent, and what RegistryExposer runs directly without a worker (tests,
    benchmarks).  Same methods as :class:`SambaWorker`."""

    def __init__(self, conf: Any, notifier: Any = None) -> None:
        from remotevss.samba._lib import module
        from remotevss.samba.notify import SmbdNotifier

        self.conf = conf
        self._smbconf = module("samba.smbconf")
        self.notifier = notifier if notifier is not None else SmbdNotifier(conf)

    def write_share(self, name: str, params: list[tuple[str, str]]) -> None:
        """Replace share ``name`` with ``params``: one registry transaction."""
        self.write_shares([(name, params)])

    def delete_share(self, name: str) -> None:
        self.delete_shares([name])

    def write_shares(self, shares: list[tuple[str, list[tuple[str, str]]]]) -> None:
        """Replace each share with its parameters, all in one registry transaction."""
        reg = self.conf.registry
        reg.transaction_start()
        try:
            for name, params in shares:
                _delete_if_present(reg, self._smbconf, name)
                reg.create_set_share(name, params)
            reg.transaction_commit()
        except BaseException:
            _cancel(reg)
            raise

    def delete_shares(self, names: list[str]) -> None:
        """Delete each share that exists, all in one registry transaction."""
        reg = self.conf.registry
        reg.transaction_start()
        try:
            for name in names:
                _delete_if_present(reg, self._smbconf, name)
            reg.transaction_commit()
        except BaseException:
            _cancel(reg)
            raise

    def get_share(self, name: str) -> tuple[str, list[tuple[str, str]]] | None:
        d = self.conf.registry_share(name)
        return None if d is None else (d.name, list(d.params))

    def notify(self, *, force_tdis: list[str] | tuple[str, ...] = (),
               conf_updated: bool = True) -> int:  # fmt: skip
        return int(self.notifier.notify(force_tdis=list(force_tdis), conf_updated=conf_updated))

    def close(self) -> None:
        pass


def _delete_if_present(reg: Any, smbconf: Any, name: str) -> None:
    try:
        reg.delete_share(name)
    except smbconf.SMBConfError as exc:
        if not exc.args or exc.args[0] != SBC_ERR_NO_SUCH_SERVICE:
            raise


def _cancel(reg: Any) -> None:
    try:
        reg.transaction_cancel()
    except Exception:  # a failed commit has already cancelled it
        log.debug("registry transaction_cancel after a failure", exc_info=True)


def serve(config_file: str) -> int:
    from remotevss.samba.conf import SambaConf

    ops = SambaOps(SambaConf(config_file))
    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "write": lambda r: ops.write_share(
            str(r["name"]), [(str(k), str(v)) for k, v in r["params"]]
        ),
        "delete": lambda r: ops.delete_share(str(r["name"])),
        "write_many": lambda r: ops.write_shares(
            [(str(n), [(str(k), str(v)) for k, v in params]) for n, params in r["shares"]]
        ),
        "delete_many": lambda r: ops.delete_shares([str(n) for n in r["names"]]),
        "get": lambda r: ops.get_share(str(r["name"])),
        "notify": lambda r: ops.notify(
            force_tdis=[str(x) for x in r.get("force_tdis", [])],
            conf_updated=bool(r["conf_updated"]),
        ),
    }
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            handler = handlers.get(req["op"])
            if handler is None:
                raise ValueError(f"unknown op {req['op']!r}")
            reply: dict[str, Any] = {"ok": True, "result": handler(req)}
        except Exception as exc:  # reported to the agent, which decides
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m remotevss.samba.worker SMB_CONF AGENT_PID", file=sys.stderr)
        return 2
    _die_with_parent(int(argv[1]))
    logging.basicConfig(level=logging.WARNING, format="remotevss samba worker: %(message)s")
    return serve(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
