"""The agent's event log and trace: one JSON line per FSRVP call, vsstrace-like detail.

Why JSON lines on stderr: under systemd, stderr is the journal; one object per
line is what log shippers (journald's JSON export, Loki, Elastic) parse
without a grammar, and what a test can read back.  Two loggers carry them:

* ``remotevss.events``: one ``fsrvp_call`` event per call (caller, client
  address, opnum name, set/copy ids, share, result name, duration) and one
  ``gc_delete``/``storage_*`` event per server-initiated deletion, at INFO, on
  by default whatever the general log level ([log] events = false mutes it);
* ``remotevss.trace``: with ``--trace``/[log] trace, every request and response
  PDU stub (decoded and hex) and every effect, at DEBUG (Windows' vsstrace).

``--log-format json`` turns every log line into a JSON object; ``text`` keeps
the classic ``time logger level message`` (event lines are still JSON there,
after the prefix).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, fields, is_dataclass
from typing import Any
from uuid import UUID

from remotevss.agent.authz import Caller
from remotevss.agent.config import LogConfig
from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import Opnum, hresult_name

EVENTS = logging.getLogger("remotevss.events")
TRACE = logging.getLogger("remotevss.trace")

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@dataclass(frozen=True)
class CallEvent:
    """One finished FSRVP call, as the service hands it to its hooks."""

    caller: Caller
    opnum: int
    request: calls.Request | None  # None: the stub did not decode (a fault)
    response: calls.Response | None
    stub: bytes
    reply: bytes
    at: float  # the service's clock when the call began (unix seconds)
    duration: float  # seconds
    fault: int | None = None  # DCE/RPC fault status instead of a response

    @property
    def opnum_name(self) -> str:
        try:
            return Opnum(self.opnum).name
        except ValueError:
            return f"OPNUM_{self.opnum}"

    @property
    def result(self) -> int | None:
        return None if self.response is None else self.response.return_value

    @property
    def result_name(self) -> str:
        if self.fault is not None:
            return f"FAULT_0x{self.fault:08X}"
        return hresult_name(self.result or 0)

    @property
    def ok(self) -> bool:
        return self.fault is None and self.result == 0

    def set_id(self) -> UUID | None:
        """The server's set id the call concerned (Start: the new one)."""
        resp = self.response
        if isinstance(resp, calls.StartShadowCopySetResponse) and self.ok:
            return resp.shadow_copy_set_id
        sid = getattr(self.request, "shadow_copy_set_id", None)
        return sid if isinstance(sid, UUID) else None

    def copy_id(self) -> UUID | None:
        resp = self.response
        if isinstance(resp, calls.AddToShadowCopySetResponse) and self.ok:
            return resp.shadow_copy_id
        cid = getattr(self.request, "shadow_copy_id", None)
        return cid if isinstance(cid, UUID) else None

    def fields(self) -> dict[str, Any]:
        sid, cid = self.set_id(), self.copy_id()
        out: dict[str, Any] = {
            "event": "fsrvp_call",
            "caller": self.caller.name or str(self.caller.uid),
            "uid": self.caller.uid,
            "transport": self.caller.transport,
            "client": self.caller.address,
            "opnum": self.opnum_name,
            "set": str(sid) if sid else None,
            "copy": str(cid) if cid else None,
            "result": self.result_name,
            "hresult": None if self.result is None else f"0x{self.result:08X}",
            "duration_ms": round(self.duration * 1000, 3),
        }
        if self.caller.transport == "samba":  # the DCE/RPC authentication of the call
            out["rpc_auth"] = _LEVEL_NAMES.get(self.caller.auth_level, str(self.caller.auth_level))
            if self.caller.rpc_user:
                out["rpc_user"] = self.caller.rpc_user
        share = getattr(self.request, "share_name", None)
        if isinstance(share, str):
            out["share"] = share
        ctx = getattr(self.request, "context", None)
        if isinstance(ctx, int):
            out["context"] = f"0x{ctx:08X}"
        return out


_LEVEL_NAMES = {1: "none", 2: "connect", 5: "integrity", 6: "privacy"}


def emit(fields_: dict[str, Any], level: int = logging.INFO) -> None:
    """One structured event line (see the module doc)."""
    EVENTS.log(level, "%s", json.dumps(fields_, sort_keys=False, default=str),
               extra={"event_fields": fields_})


def log_call(event: CallEvent) -> None:
    """The call hook behind the event log and the trace."""
    if EVENTS.isEnabledFor(logging.INFO):
        emit(event.fields())
    if TRACE.isEnabledFor(logging.DEBUG):
        TRACE.debug("%s request %s stub=%s", event.opnum_name, _plain(event.request),
                    event.stub.hex())
        TRACE.debug("%s response %s stub=%s (%.3f ms)", event.opnum_name,
                    _plain(event.response) if event.fault is None else event.result_name,
                    event.reply.hex(), event.duration * 1000)


def _plain(obj: object) -> str:
    if obj is None or not is_dataclass(obj):
        return repr(obj)
    parts = ", ".join(f"{f.name}={getattr(obj, f.name)!s}" for f in fields(obj))
    return f"{type(obj).__name__}({parts})"


def trace_effect(what: str, **detail: object) -> None:
    if TRACE.isEnabledFor(logging.DEBUG):
        TRACE.debug("effect %s %s", what, " ".join(f"{k}={v}" for k, v in detail.items()))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg; event records carry
    their fields at the top level instead of ``msg``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event_fields", None)
        if isinstance(event, dict):
            out.update(event)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(log: LogConfig, verbose: int = 0) -> None:
    """Apply [log] (and ``-v``): format, level, events, trace.  Called at start-up
    and again on SIGHUP."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    formatter: logging.Formatter = (
        JsonFormatter() if log.format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    for handler in root.handlers:
        handler.setFormatter(formatter)
    level = min(logging.getLevelNamesMapping()[log.level.upper()], logging.WARNING - 10 * verbose)
    root.setLevel(max(level, logging.DEBUG))
    EVENTS.setLevel(logging.INFO if log.events else logging.WARNING)
    TRACE.setLevel(logging.DEBUG if log.trace else logging.INFO)
    agent = logging.getLogger("remotevss.agent")
    agent.setLevel(logging.DEBUG if log.trace else logging.NOTSET)
