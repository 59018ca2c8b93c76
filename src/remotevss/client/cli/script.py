"""Script mode: ``remotevss shadow -s FILE``, DiskShadow-style scripts (docs/client.md).

A script is lines of ``set``, ``add``, ``reset``, ``create``, ``expose``,
``recover``, ``list``, ``delete``, ``query``, ``exec``, ``echo`` and ``exit``
(and DiskShadow's ``add volume``, ``set context persistent|volatile``,
``begin backup`` and ``end backup``);
``%NAME%`` expands variables that ``create`` sets (``VSS_SHADOW_SET``,
``VSS_SHADOW_i_j``, aliases).  The first failing line ends the script with
its exit code (a failing ``exec`` program: 8, not the syntax error's 2); at
the end, the auto-release sets the script made are deleted, as DiskShadow does.

Why apart from the commands: the script language (parsing, variables, the
release at the end) is its own contract; the commands themselves are the
ones the command line runs (:mod:`.commands`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from remotevss.client.cli import commands
from remotevss.client.cli.session import Session
from remotevss.client.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    ClientError,
    ExecFailed,
    UsageError,
)
from remotevss.client.unc import parse_unc
from remotevss.fsrvp import contexts

if TYPE_CHECKING:
    from remotevss.client.shadow import ShadowCopySet


#: DiskShadow's ``set context persistent|volatile [nowriters]`` as FSRVP contexts
#: (VSS's: persistent = APP_ROLLBACK, persistent nowriters = NAS_ROLLBACK, volatile
#: = BACKUP, volatile nowriters = FILE_SHARE_BACKUP).
_DISKSHADOW_CONTEXTS = {
    "persistent": ("app-rollback", "nas-rollback"),
    "volatile": ("backup", "file-share-backup"),
}


class ScriptError(UsageError):
    """A script line that cannot run as written (exit 2, like any usage error)."""


@dataclass
class _Pending:
    unc: str
    alias: str | None = None


@dataclass
class ScriptRunner:
    """DiskShadow-style scripts (docs/client.md, "Script mode")."""

    session: Session
    name: str = "<script>"
    context: str = "backup"
    writable: bool = False
    recover: bool | None = None
    expose: bool = True
    adds: list[_Pending] = field(default_factory=list)
    created: list[ShadowCopySet] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)

    def run(self, lines: Iterable[str]) -> int:
        status = EXIT_OK
        try:
            for number, raw in enumerate(lines, 1):
                try:
                    result = self.line(raw)
                except ClientError as exc:
                    from remotevss.client.shadow import describe_error

                    self.session.note(f"{self.name}:{number}: {describe_error(exc)}")
                    return exc.exit_code
                if result is not None:
                    status = result
                    break
        except KeyboardInterrupt:
            status = EXIT_INTERRUPTED
        finally:
            status = self.release() or status
        return status

    def _expand(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in self.variables:
                raise ScriptError(f"unknown variable %{key}%")
            return self.variables[key]

        return re.sub(r"%([A-Za-z_][A-Za-z0-9_]*)%", sub, text)

    def line(self, raw: str) -> int | None:
        """Run one line; an int return ends the script with that status."""
        text = raw.strip()
        if not text or text.startswith("#") or text.lower().startswith("rem "):
            return None
        try:
            words = shlex.split(self._expand(text), posix=False)
        except ValueError as exc:
            raise ScriptError(f"cannot split {text!r}: {exc}") from None
        cmd, args = words[0].lower(), words[1:]
        handler = getattr(self, f"do_{cmd}", None)
        if handler is None:
            raise ScriptError(f"unknown command {words[0]!r}")
        result: int | None = handler(args)
        return result

    # ------------------------------------------------------------- commands
    def do_set(self, args: list[str]) -> None:
        if len(args) < 2:
            raise ScriptError("set what? e.g. `set context backup`, `set writable on`")
        key, value = args[0].lower(), args[1].lower()
        if key == "context":
            extra = [a.lower() for a in args[2:]]
            if value in _DISKSHADOW_CONTEXTS:
                if extra not in ([], ["nowriters"]):
                    raise ScriptError(f"set context {value} [nowriters]")
                self.context = _DISKSHADOW_CONTEXTS[value][bool(extra)]
                return None
            if value == "clientaccessible":
                raise ScriptError(
                    "set context clientaccessible: no FSRVP context matches it (it is for "
                    "local volumes); use persistent, volatile or one of "
                    + ", ".join(contexts.NAMES)
                )
            if contexts.context_from_name(value) is None:
                raise ScriptError(
                    f"unknown context {value!r}; use one of {', '.join(contexts.NAMES)}, "
                    "or DiskShadow's persistent|volatile [nowriters]"
                )
            self.context = contexts.canonical_name(value)
            if extra[:1] == ["writable"]:
                self.writable = True
        elif key in ("writable", "recover", "expose"):
            if value not in ("on", "off"):
                raise ScriptError(f"set {key} on|off")
            setattr(self, key, value == "on")
        elif key == "verbose":
            pass
        else:
            raise ScriptError(f"unknown setting {args[0]!r}")
        return None

    def do_add(self, args: list[str]) -> None:

        if args and args[0].lower() == "volume":
            args = args[1:]  # DiskShadow's `add volume \\host\share\ [alias NAME]`
        if not args:
            raise ScriptError(r"add [volume] \\host\share [alias NAME]")
        alias = None
        if len(args) == 3 and args[1].lower() == "alias":
            alias = args[2]
        elif len(args) != 1:
            raise ScriptError(r"add [volume] \\host\share [alias NAME]")
        u = parse_unc(args[0])
        self.adds.append(_Pending(u.wire, alias))
        self.session.say(f"added {u.display}" + (f" (alias {alias})" if alias else ""))
        return None

    def do_begin(self, args: list[str]) -> None:
        return self._backup_bracket("begin", args)

    def do_end(self, args: list[str]) -> None:
        return self._backup_bracket("end", args)

    def _backup_bracket(self, verb: str, args: list[str]) -> None:
        """DiskShadow's ``begin backup`` / ``end backup``: they drive the requester's
        local VSS writers; FSRVP has none on the client (the server runs its own), so
        they are accepted and do nothing.  ``begin restore`` is refused."""
        if [a.lower() for a in args] != ["backup"]:
            raise ScriptError(f"{verb} backup (restores are not an FSRVP operation)")
        return None

    def do_reset(self, args: list[str]) -> None:
        self.adds.clear()
        return None

    def do_create(self, args: list[str]) -> None:

        if args:
            raise ScriptError("create takes no arguments (add shares first)")
        if not self.adds:
            raise ScriptError("create: no shares added")
        sets = commands.create(
            self.session,
            [a.unc for a in self.adds],
            context=self.context,
            writable=self.writable,
            expose=self.expose,
            recover=self.recover,
            use_pending=False,
        )
        self.created.extend(sets)
        self.variables["VSS_SHADOW_SET"] = (
            str(sets[0].set_id) if len(sets) == 1 else str(sets[0].client_set_id)
        )
        by_key = {parse_unc(c.share_unc).key: c for s in sets for c in s.copies}
        for a in self.adds:
            copy = by_key.get(parse_unc(a.unc).key)
            if a.alias and copy is not None:
                self.variables[a.alias] = str(copy.copy_id)
        for i, s in enumerate(sets, 1):
            for j, c in enumerate(s.copies, 1):
                self.variables.setdefault(f"VSS_SHADOW_{i}_{j}", str(c.copy_id))
        self.adds.clear()
        return None

    def do_expose(self, args: list[str]) -> None:
        if not args:
            raise ScriptError("expose SET_ID")
        commands.expose(self.session, args, recover=self.recover)
        return None

    def do_recover(self, args: list[str]) -> None:
        if not args:
            raise ScriptError("recover SET_ID")
        commands.recover(self.session, args)
        return None

    def _shadows_target(self, args: list[str], verb: str) -> tuple[str, list[str]]:
        if not args or args[0].lower() != "shadows":
            raise ScriptError(f"{verb} shadows all | set ID | id ID")
        rest = args[1:]
        if not rest:
            raise ScriptError(f"{verb} shadows all | set ID | id ID")
        kind = rest[0].lower()
        if kind == "all" and len(rest) == 1:
            return "all", []
        if kind in ("set", "id") and len(rest) == 2:
            return kind, [rest[1]]
        raise ScriptError(f"{verb} shadows all | set ID | id ID")

    def do_list(self, args: list[str]) -> None:
        kind, ids = self._shadows_target(args, "list")
        commands.list_sets(self.session, ids)
        return None

    def do_delete(self, args: list[str]) -> None:
        kind, ids = self._shadows_target(args, "delete")
        if kind == "all":
            commands.delete(self.session, [], all_sets=True)
        else:
            commands.delete(self.session, ids)
        self._forget_deleted()
        return None

    def _forget_deleted(self) -> None:
        known = {(r.set_id, r.server) for r in self.session.state.sets()}
        self.created = [s for s in self.created if (s.set_id, s.server) in known]

    def do_query(self, args: list[str]) -> None:
        if not args:
            raise ScriptError(r"query \\host\share")
        commands.query(self.session, args)
        return None

    def do_exec(self, args: list[str]) -> None:
        if not args:
            raise ScriptError("exec PROGRAM [ARGS...]")
        env = dict(os.environ)
        for key, value in self.variables.items():
            env[f"REMOTEVSS_{key}" if not key.startswith("VSS_") else key] = value
        shares = [c.exposed_unc for s in self.created for c in s.copies if c.exposed_unc]
        env["REMOTEVSS_SNAPSHOT_SHARES"] = "\n".join(shares)
        argv = [a[1:-1] if len(a) > 1 and a[0] == a[-1] == '"' else a for a in args]
        try:
            done = subprocess.run(argv, env=env, check=False)
        except OSError as exc:
            raise ExecFailed(argv[0], f"cannot run it: {exc.strerror}") from None
        if done.returncode < 0:
            raise ExecFailed(argv[0], f"killed by signal {-done.returncode}", done.returncode)
        if done.returncode != 0:
            raise ExecFailed(argv[0], f"exited with status {done.returncode}", done.returncode)
        return None

    def do_echo(self, args: list[str]) -> None:
        self.session.say(" ".join(args))
        return None

    def do_exit(self, args: list[str]) -> int:
        if not args:
            return EXIT_OK
        try:
            return int(args[0])
        except ValueError:
            raise ScriptError("exit [STATUS]") from None

    # ------------------------------------------------------------- end
    def release(self) -> int:
        """Delete the script's auto-release copies that still exist (as DiskShadow does)."""
        from remotevss.client.shadow import describe_error, is_auto_release

        self._forget_deleted()
        status = EXIT_OK
        for s in self.created:
            if not is_auto_release(s.context) or s.set_id is None:
                continue
            rec = next(
                (
                    r
                    for r in self.session.state.sets()
                    if (r.set_id, r.server) == (s.set_id, s.server)
                ),
                None,
            )
            if rec is None:
                continue
            try:
                self.session.say(f"releasing auto-release set {{{s.set_id}}}")
                commands.delete(self.session, [], records=[(rec, None)])
            except ClientError as exc:
                self.session.note(f"cannot release set {{{s.set_id}}}: {describe_error(exc)}")
                status = status or exc.exit_code
        self.created.clear()
        return status


def run_script(session: Session, path: str) -> int:
    """Run the script in ``path`` (``-``: standard input); its exit status."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
        name = "<stdin>"
    else:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read script {path}: {exc.strerror}") from None
        name = path
    session.script = True
    return ScriptRunner(session, name=name).run(lines)
