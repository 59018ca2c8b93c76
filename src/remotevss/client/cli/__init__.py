r"""``remotevss shadow``: a DiskShadow-like command line for any FSRVP server.

Commands (docs/client.md has the full reference and the exit codes)::

    remotevss shadow [OPTIONS] add UNC...            remember shares for the next create
    remotevss shadow [OPTIONS] create [UNC...]       shadow-copy them (and the remembered ones)
    remotevss shadow [OPTIONS] list [ID]             the client table, checked against servers
    remotevss shadow [OPTIONS] expose ID             expose a committed set (or re-read mappings)
    remotevss shadow [OPTIONS] recover ID            RecoveryComplete (seal a writable set)
    remotevss shadow [OPTIONS] delete ID...|--all    delete sets or single shadow copies
    remotevss shadow [OPTIONS] query UNC...          IsPathSupported / IsPathShadowCopied
    remotevss shadow [OPTIONS] -s FILE               run a DiskShadow-style script

Credentials as smbclient takes them: ``-U [DOMAIN\]USER[%PASSWORD]``,
``-A FILE`` (``username =``, ``password =``, ``domain =`` lines),
``--nt-hash``, ``-k`` for Kerberos from ``KRB5CCNAME``; the password may
come from ``REMOTEVSS_PASSWORD`` (and the user from ``REMOTEVSS_USER``),
otherwise it is asked for on a terminal.

Why its own package: the agent's CLI (``remotevss agent``) must not grow
client options; ``remotevss.cli`` only calls :func:`add_parser` and
:func:`run`.  Inside: :mod:`.parser` (options and :class:`Settings`),
:mod:`.credentials`, :mod:`.session` (one invocation's resources and output),
:mod:`.commands`, :mod:`.render` (text and JSON), :mod:`.script` (script
mode) and :mod:`.main` (:func:`run`, the error boundary).

Rule: importing this package must stay cheap -- ``remotevss --help`` and every
``remotevss backup`` command build the parser -- so nothing here imports
:mod:`remotevss.client.shadow`, :mod:`remotevss.client.connection` or impacket
at module level; the commands import them when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from remotevss.client.cli.parser import AUTH_LEVEL_CHOICES, Settings, add_parser, connection_options

if TYPE_CHECKING:
    from remotevss.client.cli.main import run
    from remotevss.client.cli.script import ScriptError, ScriptRunner
    from remotevss.client.cli.session import Session

# Loaded on first use: the parser is all that ``remotevss backup`` needs of this
# package to build its own (for ``run``'s connection options), and the rest is
# ~45 ms of imports that every backup command would otherwise wait for.
_LAZY = {"run": "main", "ScriptError": "script", "ScriptRunner": "script",
         "Session": "session"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = [
    "AUTH_LEVEL_CHOICES",
    "ScriptError",
    "ScriptRunner",
    "Session",
    "Settings",
    "add_parser",
    "connection_options",
    "run",
]
