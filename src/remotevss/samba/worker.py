"""The Samba worker: registry share writes and smbd notifications in a child process.

Why a child at all: python-samba 4.17's libsmbconf and messaging bindings
leak ~1.1-1.35 KB per call (RELIABILITY.md §5) and cost ~30 MB resident.
The agent now does that work without python-samba (samba/light.py), in
itself when it can; this class runs a child for the two cases it cannot:

* ``mode="light"``: the light operations in a tiny child (~9 MB, standard
  library and ``tdb`` only), when something else in the calling process holds
  ``registry.tdb`` open (python-samba's loadparm of a config with ``include =
  registry``; not the agent, whose loadparm runs in samba/loadparm.py's
  child): tdb allows one handle per file and process.
* ``mode="samba"``: python-samba's libsmbconf and messaging (:class:`SambaOps`),
  the fallback for a registry format the light code refuses or clustered
  Samba; replaced after ``max_ops`` operations so its leaks stay bounded.

Either child runs only while there is work: it exits after ``idle_exit``
seconds without an operation and is started again by the next one, or ahead
of it by :meth:`SambaWorker.warm` (the agent calls it when a shadow copy set
starts).  It dies with the agent (PR_SET_PDEATHSIG, samba/child.py), so a
registry transaction can never complete behind the back of the next agent's
reconciliation; tdb transactions roll back when their writer dies.  The
protocol is in samba/child.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from remotevss.linepipe import LinePipe

log = logging.getLogger("remotevss.samba")

MAX_LINE = 1 << 20
IDLE_EXIT = 30.0  # seconds without an operation before the child exits


class WorkerError(RuntimeError):
    """The worker refused or failed an operation, or is gone.  ``kind``: the class
    name of the child's exception (e.g. ``RegdbFormatError``), "" if it is gone."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


class SambaWorker:
    """The agent's side: one child at a time, replaced every ``max_ops`` operations."""

    def __init__(
        self,
        config_file: str,
        *,
        mode: str = "samba",
        light_paths: Any = None,
        max_ops: int = 5000,
        timeout: float = 30.0,
        idle_exit: float | None = IDLE_EXIT,
    ) -> None:
        if mode not in ("samba", "light") or (mode == "light") != (light_paths is not None):
            raise ValueError("mode 'light' needs light_paths, mode 'samba' none")
        self.config_file = config_file
        self.mode = mode
        self.light_paths = light_paths
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
        self.write_shares([(name, params)])

    def delete_share(self, name: str) -> None:
        self.delete_shares([name])

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

    def share_names(self) -> list[str]:
        return [str(n) for n in self.call({"op": "names"})]

    def check(self) -> None:
        """Raise WorkerError (kind ``RegdbFormatError``) if the child cannot write
        this registry (a no-op for the python-samba child)."""
        self.call({"op": "check"})

    def notify(self, *, force_tdis: Sequence[str] = (),
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
                # recycle; the fresh child starts now, so it is ready by the
                # time the next call comes
                self._stop(kill=False)
                self._ensure()
            self._arm_idle()
        if not isinstance(reply, dict) or "ok" not in reply:
            raise WorkerError("Samba worker sent a malformed reply")
        if not reply["ok"]:
            raise WorkerError(str(reply.get("error", "unknown error")), str(reply.get("kind", "")))
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
        arg = self.config_file if self.mode == "samba" else json.dumps(self.light_paths.as_list())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "remotevss.samba.child", self.mode, arg, str(os.getpid())],
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


# ---------------------------------------------------------------- python-samba operations


class SambaOps:
    """python-samba's operations, in the calling process: what the ``samba`` child
    runs (the fallback, see the module doc).  Same methods as :class:`SambaWorker`."""

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

    def share_names(self) -> list[str]:
        return self.conf.registry_share_names()  # type: ignore[no-any-return]

    def check(self) -> None:
        pass

    def notify(self, *, force_tdis: Sequence[str] = (),
               conf_updated: bool = True) -> int:  # fmt: skip
        return int(self.notifier.notify(force_tdis=list(force_tdis), conf_updated=conf_updated))

    def close(self) -> None:
        pass


def _delete_if_present(reg: Any, smbconf: Any, name: str) -> None:
    from remotevss.samba.conf import SBC_ERR_NO_SUCH_SERVICE

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
