"""``remotevss shadow``'s entry point: one command or one script, then its exit status.

Why its own module: the error boundary lives here -- every
:class:`~remotevss.client.errors.ClientError` becomes one line on stderr and
its exit code, a client table failing mid-command exit 7, Ctrl-C exit 130, a
closed output pipe a quiet exit 0 -- and the client table is closed whatever
happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, TextIO

from remotevss.client.cli.commands import dispatch
from remotevss.client.cli.parser import Settings
from remotevss.client.cli.script import run_script
from remotevss.client.cli.session import Session
from remotevss.client.errors import (
    EXIT_INTERRUPTED,
    EXIT_LOCAL,
    EXIT_OK,
    ClientError,
    UsageError,
)

if TYPE_CHECKING:
    from remotevss.client.shadow import Connector


def run(
    args: argparse.Namespace,
    *,
    connector: Connector | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``remotevss shadow`` as parsed by the parser :func:`add_parser` built.

    ``connector``, ``out`` and ``err`` are for tests (fake servers, captured output).
    """
    session = Session(Settings.from_args(args), out, err, connector)
    err = session.err
    try:
        script = getattr(args, "script", None)
        command = getattr(args, "shadow_command", None)
        if script is not None:
            if command is not None:
                raise UsageError("-s FILE and a command do not go together")
            return run_script(session, script)
        if command is None:
            raise UsageError(
                "a command is needed: add, create, list, expose, recover, delete, "
                "query (or -s FILE); see --help"
            )
        return dispatch(session, args)
    except ClientError as exc:
        from remotevss.client.shadow import describe_error

        print(f"remotevss shadow: error: {describe_error(exc)}", file=err)
        return exc.exit_code
    except sqlite3.Error as exc:  # the table broke after it opened (disk full, removed ...)
        print(f"remotevss shadow: error: client table {session.state_path()}: {exc}", file=err)
        return EXIT_LOCAL
    except KeyboardInterrupt:
        print("remotevss shadow: interrupted", file=err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `list | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        # The command's outcome is decided (and recorded: the table commits each
        # write); a Ctrl-C now must not turn it into a traceback.
        with contextlib.suppress(KeyboardInterrupt):
            session.close()
