"""The Samba worker child: registry and smbd-message operations for the agent, one
JSON request per line on stdin, one reply per line on stdout.

Two kinds (samba/worker.py starts them):

* ``light``: :class:`remotevss.samba.light.LightOps` (tdb binding, datagrams),
  given its paths as JSON.  Used when something else in the agent holds
  ``registry.tdb`` open (tdb allows one handle per file and process); imports
  nothing but the standard library and ``tdb`` (~9 MB resident).
* ``samba``: samba/worker.py's ``SambaOps`` (python-samba's libsmbconf and
  messaging, ~30 MB), the fallback for a registry format or a setup
  (clustering) the light operations do not handle.

Requests: ``{"op": "write_many", "shares": [[name, [[k, v], ...]], ...]}``,
``{"op": "delete_many", "names": [...]}``, ``{"op": "get", "name"}``,
``{"op": "names"}``, ``{"op": "check"}``,
``{"op": "notify", "force_tdis": [...], "conf_updated": bool}``.
Replies: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...",
"kind": "<exception class>"}``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

TYPE_CHECKING = False  # typing itself costs the tiny child ~2 MB
if TYPE_CHECKING:
    from typing import Any

PR_SET_PDEATHSIG = 1
SIGKILL = 9


def die_with_parent(parent: int) -> None:
    """SIGKILL when the agent dies: no registry transaction may complete behind the
    back of the next agent's reconciliation (tdb rolls back a dead writer's)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)


def _params(raw: Any) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in raw]


def serve(ops: Any) -> int:
    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "write_many": lambda r: ops.write_shares([(str(n), _params(p)) for n, p in r["shares"]]),
        "delete_many": lambda r: ops.delete_shares([str(n) for n in r["names"]]),
        "get": lambda r: ops.get_share(str(r["name"])),
        "names": lambda r: ops.share_names(),
        "check": lambda r: ops.check(),
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
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "kind": type(exc).__name__}  # fmt: skip
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("light", "samba") or not argv[2].isdigit():
        print("usage: python -m remotevss.samba.child light PATHS_JSON AGENT_PID\n"
              "       python -m remotevss.samba.child samba SMB_CONF AGENT_PID", file=sys.stderr)
        return 2
    die_with_parent(int(argv[2]))
    if argv[0] == "light":
        from remotevss.samba.light import LightOps, LightPaths

        return serve(LightOps(LightPaths(*json.loads(argv[1]))))
    import logging

    from remotevss.samba.conf import InProcessSambaConf
    from remotevss.samba.worker import SambaOps

    logging.basicConfig(level=logging.WARNING, format="remotevss samba worker: %(message)s")
    return serve(SambaOps(InProcessSambaConf(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
