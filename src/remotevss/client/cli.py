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

Why its own module: the agent's CLI (``remotevss agent``) must not grow
client options; ``remotevss.cli`` only calls :func:`add_parser` and
:func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

from remotevss.client.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    BadState,
    ClientError,
    UnknownId,
    UsageError,
)

if TYPE_CHECKING:
    from remotevss.client.connection import ConnectOptions, Credentials
    from remotevss.client.shadow import Connector, ShadowCopySet
    from remotevss.client.state import ClientState, CopyRecord, SetRecord

CONTEXT_NAMES = ("backup", "file-share-backup", "nas-rollback", "app-rollback")
AUTH_LEVEL_CHOICES = ("privacy", "integrity", "none")
_GUID = re.compile(
    r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$"
)


# ===================================================================== parser


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the command.  The copies on the commands
    default to SUPPRESS so they do not overwrite what was given before it."""
    d: Any = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and credentials")
    g.add_argument(
        "-U",
        "--user",
        metavar="[DOMAIN\\]USER[%PASS]",
        default=d,
        help="user name, optionally with the password after %%",
    )
    g.add_argument("-W", "--workgroup", metavar="DOMAIN", default=d, help="domain of the user")
    g.add_argument(
        "-A",
        "--authentication-file",
        metavar="FILE",
        default=d,
        help="file with username=, password=, domain= lines (as smbclient)",
    )
    g.add_argument("--nt-hash", metavar="HEX", default=d, help="NT hash instead of a password")
    g.add_argument(
        "-k",
        "--kerberos",
        dest="kerberos",
        action="store_const",
        const=True,
        default=d,
        help="use Kerberos (ticket from KRB5CCNAME, or the password)",
    )
    g.add_argument(
        "--no-kerberos",
        dest="kerberos",
        action="store_const",
        const=False,
        default=d,
        help="never use Kerberos, even if a ccache exists",
    )
    g.add_argument("--kdc", metavar="HOST", default=d, help="KDC host (default: the realm)")
    g.add_argument(
        "--auth-level",
        choices=AUTH_LEVEL_CHOICES,
        default=d,
        help="DCE/RPC authentication level (default privacy)",
    )
    g.add_argument("-p", "--port", type=int, default=d, help="SMB port (default 445)")
    g.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=d,
        help="RPC call timeout (default 180, the spec's)",
    )
    g.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        default=d,
        help="TCP/SMB/bind timeout (default 30)",
    )
    g.add_argument(
        "--allow-smb2",
        action="store_const",
        const=True,
        default=d,
        help="accept a server without SMB 3",
    )
    g.add_argument(
        "--no-follow-owner",
        dest="follow_owner",
        action="store_const",
        const=False,
        default=d,
        help="do not reconnect to IsPathSupported's OwnerMachineName",
    )
    g.add_argument(
        "--resolve",
        action="store_const",
        const=True,
        default=d,
        help="use DNS to tell whether an address and a name are one server",
    )
    o = p.add_argument_group("output and state")
    o.add_argument(
        "--json",
        action="store_const",
        const=True,
        default=d,
        help="machine-readable output (JSON; one document per script command)",
    )
    o.add_argument(
        "--state",
        metavar="PATH",
        default=d,
        help="client table (default $REMOTEVSS_CLIENT_STATE or "
        "$XDG_STATE_HOME/remotevss/client.sqlite3)",
    )
    o.add_argument("-v", "--verbose", action="count", default=d)
    return p


def connection_options(suppress: bool = False) -> argparse.ArgumentParser:
    """The credential, connection, output and state options as a parent parser
    (``remotevss backup run`` takes the same ones for its shadow copy sets)."""
    return _common(suppress)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``shadow`` and its commands to the ``remotevss`` parser."""
    top = _common(False)
    sub_common = _common(True)
    p: argparse.ArgumentParser = subparsers.add_parser(
        "shadow",
        parents=[top],
        help="drive any FSRVP server over SMB (DiskShadow-like)",
        description="Create, expose, list and delete shadow copies of SMB shares on any "
        "FSRVP server (Windows, Samba, remotevss).  See docs/client.md.",
    )
    p.add_argument(
        "-s",
        "--script",
        metavar="FILE",
        help="run a DiskShadow-style script ('-' reads standard input)",
    )
    cmds = p.add_subparsers(dest="shadow_command", metavar="COMMAND")

    a = cmds.add_parser("add", parents=[sub_common], help="remember shares for the next create")
    a.add_argument("uncs", nargs="+", metavar="UNC", help=r"\\host\share")
    a.add_argument(
        "--no-check", action="store_true", help="do not ask the server (no IsPathSupported)"
    )

    c = cmds.add_parser("create", parents=[sub_common], help="create a shadow copy set")
    c.add_argument("uncs", nargs="*", metavar="UNC", help="shares (plus those remembered by add)")
    c.add_argument("--context", choices=CONTEXT_NAMES, default="backup")
    c.add_argument(
        "--writable",
        action="store_true",
        help="writable snapshots (ATTR_AUTO_RECOVERY); left Exposed until `recover`",
    )
    c.add_argument(
        "--no-expose",
        action="store_true",
        help="stop after Commit; `expose` it within the server's 180 s timer",
    )
    c.add_argument(
        "--recover",
        dest="recover",
        action="store_const",
        const=True,
        default=None,
        help="call RecoveryComplete even for a writable set",
    )
    c.add_argument(
        "--no-recover",
        dest="recover",
        action="store_const",
        const=False,
        help="leave the set Exposed (no RecoveryComplete)",
    )

    ls = cmds.add_parser("list", parents=[sub_common], help="list shadow copies this client made")
    ls.add_argument("ids", nargs="*", metavar="ID", help="set or shadow copy ids (default: all)")
    ls.add_argument("--no-check", action="store_true", help="do not ask the servers")
    ls.add_argument("--prune", action="store_true", help="drop entries the servers no longer know")

    e = cmds.add_parser("expose", parents=[sub_common], help="expose a committed set")
    e.add_argument("ids", nargs="+", metavar="ID")
    e.add_argument("--no-recover", dest="recover", action="store_const", const=False, default=None)
    e.add_argument("--recover", dest="recover", action="store_const", const=True)

    r = cmds.add_parser("recover", parents=[sub_common], help="RecoveryComplete on exposed sets")
    r.add_argument("ids", nargs="+", metavar="ID")

    d = cmds.add_parser("delete", parents=[sub_common], help="delete sets or shadow copies")
    d.add_argument("ids", nargs="*", metavar="ID", help="set, creation or shadow copy ids")
    d.add_argument("--all", action="store_true", help="every set in the client table")
    d.add_argument("--server", help="with --all: only this server's sets")
    d.add_argument(
        "--share",
        metavar="UNC",
        help="delete a copy this client did not record: needs --set and --copy",
    )
    d.add_argument("--set", dest="set_id", metavar="SET_ID")
    d.add_argument("--copy", dest="copy_id", metavar="COPY_ID")

    q = cmds.add_parser(
        "query", parents=[sub_common], help="IsPathSupported / IsPathShadowCopied for shares"
    )
    q.add_argument("uncs", nargs="+", metavar="UNC")
    return p


# ===================================================================== session


def _parse_id(text: str) -> UUID:
    m = _GUID.match(text.strip())
    if not m:
        raise UsageError(f"not a GUID: {text!r}")
    return UUID(m.group(1))


def _read_auth_file(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read authentication file {path}: {exc.strerror}") from None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


@dataclass
class Settings:
    """What the options say, independent of argparse (script mode shares it)."""

    user: str | None = None
    workgroup: str | None = None
    authentication_file: str | None = None
    nt_hash: str | None = None
    kerberos: bool | None = None
    kdc: str | None = None
    auth_level: str = "privacy"
    port: int = 445
    timeout: float = 180.0
    connect_timeout: float = 30.0
    allow_smb2: bool = False
    follow_owner: bool = True
    resolve: bool = False
    json: bool = False
    state: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        s = cls()
        for name in vars(s):
            value = getattr(args, name, None)
            if value is not None:
                setattr(s, name, value)
        return s


class Session:
    """One invocation (or one script): options, lazily built credentials, the table."""

    def __init__(
        self,
        settings: Settings,
        out: TextIO | None = None,
        err: TextIO | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.settings = settings
        self.connector = connector  # None: real SMB connections (tests pass fakes)
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.script = False  # JSON documents one per line
        self._creds: Credentials | None = None
        self._state: ClientState | None = None

    # ------------------------------------------------------------- resources
    @property
    def state(self) -> ClientState:
        if self._state is None:
            from remotevss.client.state import ClientState

            self._state = ClientState(self.settings.state)
        return self._state

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

    def options(self) -> ConnectOptions:
        from remotevss.client.connection import ConnectOptions

        s = self.settings
        try:
            return ConnectOptions(
                port=s.port,
                auth_level=s.auth_level,  # type: ignore[arg-type]
                call_timeout=s.timeout,
                connect_timeout=s.connect_timeout,
                require_smb3=not s.allow_smb2,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def credentials(self) -> Credentials:
        if self._creds is None:
            self._creds = self._build_credentials()
        return self._creds

    def _build_credentials(self) -> Credentials:
        from remotevss.client.connection import Credentials, ccache_path

        s = self.settings
        user = s.user if s.user is not None else os.environ.get("REMOTEVSS_USER", "")
        password: str | None = None
        domain = s.workgroup or ""
        if s.authentication_file:
            f = _read_auth_file(s.authentication_file)
            user = user or f.get("username", "")
            password = f.get("password")
            domain = domain or f.get("domain", "")
        if "%" in user:
            user, password = user.split("%", 1)
        for sep in ("\\", "/"):
            if sep in user:
                domain, user = user.split(sep, 1)
                break
        else:
            if "@" in user and not domain:
                user, domain = user.rsplit("@", 1)
        if password is None:
            password = os.environ.get("REMOTEVSS_PASSWORD")
        nt_hash = (s.nt_hash or "").strip()
        if nt_hash and ":" in nt_hash:  # LM:NT as impacket tools take it
            nt_hash = nt_hash.split(":", 1)[1]
        if nt_hash and not re.fullmatch(r"[0-9a-fA-F]{32}", nt_hash):
            raise UsageError("--nt-hash needs 32 hex digits")
        kerberos = s.kerberos
        if kerberos is None:
            kerberos = ccache_path() is not None and not password and not nt_hash
        if not kerberos and not nt_hash and password is None:
            if not user:
                raise UsageError(
                    "no credentials: use -U USER[%PASSWORD], -A FILE, REMOTEVSS_USER and "
                    "REMOTEVSS_PASSWORD, or -k with a Kerberos ticket"
                )
            if sys.stdin.isatty():
                password = getpass.getpass(f"Password for [{domain}\\{user}]: ")
            else:
                raise UsageError(
                    f"no password for {user}: use -U {user}%PASSWORD, REMOTEVSS_PASSWORD, "
                    "-A FILE, --nt-hash or -k"
                )
        if kerberos and not user and ccache_path() is None and not password:
            raise UsageError("Kerberos: no ticket in KRB5CCNAME and no user/password")
        return Credentials(
            username=user,
            password=password or "",
            domain=domain,
            nt_hash=nt_hash,
            use_kerberos=kerberos,
            kdc_host=s.kdc,
        )

    # ------------------------------------------------------------- output
    def emit(self, doc: dict[str, Any]) -> None:
        if self.settings.json:
            print(json.dumps(doc, indent=None if self.script else 2), file=self.out)

    def say(self, text: str) -> None:
        if not self.settings.json:
            print(text, file=self.out)

    def note(self, text: str) -> None:
        """Messages about what happened beside the result (stale entries ...): stderr."""
        print(text, file=self.err)

    # ------------------------------------------------------------- lookups
    def find_sets(self, ids: Iterable[str]) -> list[tuple[SetRecord, CopyRecord | None]]:
        """(set, copy-or-None) per id, in order, sets not repeated; UnknownId if one is unknown."""
        found: list[tuple[SetRecord, CopyRecord | None]] = []
        seen: set[tuple[UUID, str, UUID | None]] = set()
        for text in ids:
            ident = _parse_id(text)
            sets, copy = self.state.find(ident)
            if not sets:
                raise UnknownId(
                    f"no shadow copy set or shadow copy {{{ident}}} in the client table "
                    f"{self.state.path}"
                )
            for rec in sets:
                key = (rec.set_id, rec.server, copy.copy_id if copy else None)
                if key not in seen:
                    seen.add(key)
                    found.append((rec, copy))
        return found

    def resume(self, rec: SetRecord) -> ShadowCopySet:
        from remotevss.client.shadow import SequenceOptions, ShadowCopySet

        s = ShadowCopySet.resume(
            rec,
            self.credentials(),
            self.options(),
            state=self.state,
            timeouts=SequenceOptions(),
            connector=self.connector,
        )
        s.settings.follow_owner = self.settings.follow_owner
        return s

    # ================================================================= commands
    def cmd_add(self, uncs: Sequence[str], check: bool = True) -> int:
        from remotevss.client.shadow import query_path
        from remotevss.client.unc import parse_unc

        parsed = [parse_unc(u) for u in uncs]
        for u in parsed:
            if check:
                q = query_path(u, self.credentials(), self.options(), connector=self.connector)
                if not q.supported:
                    raise UsageError(f"{u.display}: the server cannot shadow-copy this share")
            new = self.state.add_pending(u.wire)
            self.say(f"{'added' if new else 'already added'}: {u.display}")
        pending = self.state.pending()
        self.say(f"{len(pending)} share(s) pending; `remotevss shadow create` shadow-copies them")
        self.emit({"pending": [p.rstrip("\\") for p in pending]})
        return EXIT_OK

    def cmd_create(
        self,
        uncs: Sequence[str],
        *,
        context: str = "backup",
        writable: bool = False,
        expose: bool = True,
        recover: bool | None = None,
        use_pending: bool = True,
    ) -> list[ShadowCopySet]:
        from remotevss.client.shadow import CreateRequest, create_shadow_copies
        from remotevss.client.unc import parse_unc

        pending = self.state.pending() if use_pending else []
        given = [parse_unc(u) for u in uncs]
        keys = {u.key for u in given}
        all_uncs = given + [u for u in map(parse_unc, pending) if u.key not in keys]
        if not all_uncs:
            raise UsageError("nothing to create: give shares, or `remotevss shadow add` them first")
        request = CreateRequest(
            all_uncs,
            context=context,
            writable=writable,
            expose=expose,
            recover=recover,
            follow_owner=self.settings.follow_owner,
            resolve=self.settings.resolve,
        )
        sets = create_shadow_copies(
            request, self.credentials(), self.options(), state=self.state, connector=self.connector
        )
        if use_pending and pending:
            self.state.clear_pending()
        records = [s.record() for s in sets]
        self.print_sets(records, title="created")
        if not expose:
            self.note(
                "note: the set is committed but not exposed; run `remotevss shadow expose "
                "ID` within the server's message sequence timer (180 s)"
            )
        elif writable and recover is not True:
            self.note(
                "note: writable set left Exposed; run `remotevss shadow recover ID` when "
                "done (a spec server drops an unrecovered set after its timer)"
            )
        return sets

    def cmd_list(self, ids: Sequence[str], check: bool = True, prune: bool = False) -> int:
        from remotevss.client.shadow import check_set, describe_error

        records = [rec for rec, _ in self.find_sets(ids)] if ids else self.state.sets()
        status = EXIT_OK
        errors: list[dict[str, str]] = []
        stale: list[dict[str, str]] = []
        unverified: list[dict[str, str]] = []
        if check and records:
            from remotevss.client.shadow import _default_connector

            connect = self.connector or _default_connector

            by_owner: dict[tuple[str, int], list[SetRecord]] = {}
            for rec in records:
                by_owner.setdefault((rec.owner, rec.port), []).append(rec)
            for (owner, port), recs in by_owner.items():
                opts = dataclasses.replace(self.options(), port=port)
                try:
                    conn = connect(owner, self.credentials(), opts)
                except ClientError as exc:
                    status = status or exc.exit_code
                    errors.append({"server": owner, "error": describe_error(exc)})
                    self.note(f"cannot check {owner}: {describe_error(exc)}")
                    continue
                try:
                    for rec in recs:
                        try:
                            res = check_set(rec, state=self.state, conn=conn)
                        except ClientError as exc:
                            status = status or exc.exit_code
                            errors.append({"server": owner, "error": describe_error(exc)})
                            self.note(f"cannot check set {{{rec.set_id}}}: {describe_error(exc)}")
                            break
                        for c, why in res.unknown:
                            unverified.append(
                                {"copy_id": str(c.copy_id), "set_id": str(rec.set_id),
                                 "reason": why}
                            )  # fmt: skip
                        for c, why in res.stale:
                            stale.append(
                                {
                                    "copy_id": str(c.copy_id),
                                    "set_id": str(rec.set_id),
                                    "share": c.share_unc.rstrip("\\"),
                                    "reason": why,
                                }
                            )
                            self.note(
                                f"shadow copy {{{c.copy_id}}} of {c.share_unc.rstrip(chr(92))} "
                                f"is no longer on {rec.server} ({why}); "
                                + (
                                    "removed from the client table"
                                    if prune
                                    else "marked stale (`list --prune` or `delete` removes it)"
                                )
                            )
                            if prune:
                                self.state.remove_copy(c.copy_id, c.server)
                finally:
                    conn.close()
            if prune:
                records = [
                    r
                    for r in self.state.sets()
                    if not ids or r.set_id in {x.set_id for x in records}
                ]
        self.print_sets(records, stale=stale, errors=errors, unverified=unverified)
        return status

    def cmd_expose(self, ids: Sequence[str], recover: bool | None = None) -> list[SetRecord]:
        from remotevss.client.state import SetStatus

        done: list[SetRecord] = []
        for rec, _ in self.find_sets(ids):
            s = self.resume(rec)
            try:
                if rec.status == SetStatus.COMMITTED:
                    s.expose(recover=recover)
                elif rec.status in (SetStatus.EXPOSED, SetStatus.RECOVERED):
                    try:
                        s.refresh_mappings()
                    except BadState:
                        if rec.status != SetStatus.RECOVERED:
                            raise
                        # MS-FSRVP 3.1.4.11: a server SHOULD refuse GetShareMapping once
                        # the set is Recovered (Samba allows it): show what we recorded.
                        self.note(
                            f"set {{{rec.set_id}}} is recovered; the server no longer "
                            "reports its mappings (FSRVP_E_BAD_STATE): showing the recorded ones"
                        )
                else:
                    raise UsageError(
                        f"set {{{rec.set_id}}} is {rec.status}; only a committed set can be exposed"
                    )
            finally:
                s.close()
            done.append(s.record())
        self.print_sets(done, title="exposed")
        return done

    def cmd_recover(self, ids: Sequence[str]) -> int:
        from remotevss.client.state import SetStatus

        done = []
        for rec, _ in self.find_sets(ids):
            if rec.status == SetStatus.RECOVERED:
                self.say(f"set {{{rec.set_id}}} is already recovered")
                done.append(
                    {"set_id": str(rec.set_id), "status": SetStatus.RECOVERED, "changed": False}
                )
                continue
            if rec.status != SetStatus.EXPOSED:
                raise UsageError(
                    f"set {{{rec.set_id}}} is {rec.status}; recover needs an exposed set"
                )
            s = self.resume(rec)
            try:
                s.recovery_complete()
            finally:
                s.close()
            self.say(f"set {{{rec.set_id}}} recovered (RecoveryComplete)")
            done.append({"set_id": str(rec.set_id), "status": SetStatus.RECOVERED, "changed": True})
        self.emit({"recovered": done})
        return EXIT_OK

    def cmd_delete(
        self,
        ids: Sequence[str],
        *,
        all_sets: bool = False,
        server: str | None = None,
        share: str | None = None,
        set_id: str | None = None,
        copy_id: str | None = None,
        records: Sequence[tuple[SetRecord, CopyRecord | None]] | None = None,
    ) -> int:
        from remotevss.client.shadow import describe_error
        from remotevss.client.state import SetStatus

        if share is not None:
            targets = [self._explicit_target(share, set_id, copy_id)]
            missing_ok = False
        else:
            if set_id or copy_id:
                raise UsageError("--set and --copy go with --share")
            if records is not None:
                targets = list(records)
            elif all_sets:
                if ids:
                    raise UsageError("give ids or --all, not both")
                targets = [
                    (r, None)
                    for r in self.state.sets()
                    if server is None or r.server == server.lower() or r.owner == server.lower()
                ]
            elif ids:
                targets = self.find_sets(ids)
            else:
                raise UsageError("delete what? give ids, --all, or --share with --set and --copy")
            missing_ok = True
        results: list[dict[str, str]] = []
        first_error: ClientError | None = None
        for rec, copy in targets:
            s = self.resume(rec)
            try:
                if rec.status not in (SetStatus.EXPOSED, SetStatus.RECOVERED, SetStatus.STALE):
                    if s.abort(missing_ok=missing_ok):
                        results.append({"set_id": str(rec.set_id), "outcome": "aborted"})
                        self.say(f"aborted set {{{rec.set_id}}} (it was {rec.status})")
                    else:
                        results.append({"set_id": str(rec.set_id), "outcome": "already gone"})
                        self.note(
                            f"set {{{rec.set_id}}} ({rec.status}): already gone on the server; "
                            "removed from the client table"
                        )
                    continue
                outcomes = s.delete([copy.copy_id] if copy else None, missing_ok=missing_ok)
            except ClientError as exc:
                first_error = first_error or exc
                if len(targets) == 1:
                    continue
                self.note(
                    f"cannot delete set {{{rec.set_id}}} on {rec.server}: {describe_error(exc)}"
                )
                continue
            finally:
                s.close()
            for o in outcomes:
                c = o.copy
                results.append(
                    {
                        "set_id": str(rec.set_id),
                        "copy_id": str(c.copy_id),
                        "share": c.share_display,
                        "snapshot_share": c.exposed_unc or "",
                        "outcome": "deleted" if o.deleted else "already gone",
                    }
                )
                if o.deleted:
                    self.say(f"deleted shadow copy {{{c.copy_id}}} of {c.share_display}")
                else:
                    self.note(
                        f"shadow copy {{{c.copy_id}}} of {c.share_display}: {o.detail}; "
                        "removed from the client table"
                    )
        self.emit({"deleted": results})
        if first_error is not None:
            raise first_error
        return EXIT_OK

    def _explicit_target(
        self, share: str, set_id: str | None, copy_id: str | None
    ) -> tuple[SetRecord, CopyRecord | None]:
        import time

        from remotevss.client.state import CopyRecord, SetRecord, SetStatus
        from remotevss.client.unc import parse_unc

        if not set_id or not copy_id:
            raise UsageError("--share needs --set SET_ID and --copy COPY_ID")
        u = parse_unc(share)
        sid, cid = _parse_id(set_id), _parse_id(copy_id)
        copy = CopyRecord(cid, sid, u.host, u.wire)
        rec = SetRecord(
            sid,
            u.host,
            self.settings.port,
            u.connect_host,
            sid,
            0,
            False,
            SetStatus.EXPOSED,
            time.time(),
            time.time(),
            copies=[copy],
        )
        return rec, copy

    def cmd_query(self, uncs: Sequence[str]) -> int:
        from remotevss.client.shadow import query_path
        from remotevss.client.unc import parse_unc

        results = []
        for text in uncs:
            q = query_path(
                parse_unc(text), self.credentials(), self.options(), connector=self.connector
            )
            copied = "unknown" if q.shadow_copied is None else "yes" if q.shadow_copied else "no"
            self.say(
                f"{q.unc}: {'supported' if q.supported else 'NOT supported'}"
                f"{f' (owner {q.owner})' if q.owner else ''}; shadow copied: {copied}"
                f"{f' ({q.note})' if q.note else ''}"
            )
            results.append(
                {
                    "share": q.unc,
                    "supported": q.supported,
                    "owner": q.owner,
                    "shadow_copied": q.shadow_copied,
                    "compatibility": q.compatibility,
                    "note": q.note,
                }
            )
        self.emit({"paths": results})
        return EXIT_OK

    # ================================================================= listing
    def print_sets(
        self,
        records: Sequence[SetRecord],
        *,
        title: str = "",
        stale: list[dict[str, str]] | None = None,
        unverified: list[dict[str, str]] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        doc: dict[str, Any] = {"sets": [_set_json(r) for r in records]}
        if stale is not None:
            doc["stale"] = stale
        if unverified is not None:
            doc["unverified"] = unverified  # the server has the set but would not map it
        if errors is not None:
            doc["errors"] = errors
        self.emit(doc)
        if self.settings.json:
            return
        groups: dict[UUID, int] = {}
        for r in records:
            groups[r.client_set_id] = groups.get(r.client_set_id, 0) + 1
        count = 0
        for r in records:
            self.say(_format_set(r, multi=groups[r.client_set_id] > 1))
            count += len(r.copies)
        what = f"{title} " if title else "listed "
        self.say(f"Number of shadow copies {what.strip()}: {count}")


def _ts(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _filetime_text(ft: int | None) -> str:
    from remotevss.fsrvp.filetime import to_datetime as filetime_to_datetime

    dt = filetime_to_datetime(ft)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "-"


def _format_set(r: SetRecord, multi: bool = False) -> str:
    from remotevss.client.shadow import attribute_names, context_name

    lines = [f"* Shadow copy set ID = {{{r.set_id}}}"]
    where = r.server + (f" port {r.port}" if r.port != 445 else "")
    if r.owner and r.owner != r.server:
        where += f" (owner {r.owner})"
    lines.append(f"    - Server:           {where}")
    if multi:
        lines.append(f"    - Creation:         {{{r.client_set_id}}} (one set per server)")
    lines.append(f"    - Context:          {context_name(r.context)} (0x{r.context:08X})")
    lines.append(f"    - Status:           {r.status}{f' ({r.note})' if r.note else ''}")
    lines.append(f"    - Recorded:         {_ts(r.created)}")
    attrs = " ".join(attribute_names(r.context))
    for c in r.copies:
        lines.append(f"  * Shadow copy ID = {{{c.copy_id}}}")
        lines.append(f"      - Original share:  {c.share_unc.rstrip(chr(92))}")
        lines.append(f"      - Snapshot share:  {c.exposed_unc or 'not exposed'}")
        lines.append(f"      - Creation time:   {_filetime_text(c.creation_time)}")
        lines.append(f"      - Attributes:      {attrs}")
        if c.status != "ok":
            lines.append(f"      - Status:          {c.status}")
    return "\n".join(lines)


def _set_json(r: SetRecord) -> dict[str, Any]:
    from remotevss.client.shadow import attribute_names, context_name
    from remotevss.fsrvp.filetime import to_datetime as filetime_to_datetime

    def iso(ft: int | None) -> str | None:
        dt = filetime_to_datetime(ft)
        return dt.isoformat() if dt else None

    return {
        "set_id": str(r.set_id),
        "client_set_id": str(r.client_set_id),
        "server": r.server,
        "port": r.port,
        "owner": r.owner,
        "context": context_name(r.context),
        "context_value": r.context,
        "writable": r.writable,
        "status": r.status,
        "note": r.note,
        "recorded": datetime.fromtimestamp(r.created, UTC).isoformat(),
        "attributes": attribute_names(r.context),
        "copies": [
            {
                "copy_id": str(c.copy_id),
                "original_share": c.share_unc.rstrip("\\"),
                "snapshot_share": c.exposed_unc,
                "exposed_name": c.exposed_name,
                "creation_time": iso(c.creation_time),
                "status": c.status,
            }
            for c in r.copies
        ],
    }


# ===================================================================== script mode


class ScriptError(UsageError):
    pass


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
            if value not in CONTEXT_NAMES:
                raise ScriptError(
                    f"unknown context {value!r}; use one of {', '.join(CONTEXT_NAMES)}"
                )
            self.context = value
            if len(args) > 2 and args[2].lower() == "writable":
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
        from remotevss.client.unc import parse_unc

        if not args:
            raise ScriptError(r"add \\host\share [alias NAME]")
        alias = None
        if len(args) == 3 and args[1].lower() == "alias":
            alias = args[2]
        elif len(args) != 1:
            raise ScriptError(r"add \\host\share [alias NAME]")
        u = parse_unc(args[0])
        self.adds.append(_Pending(u.wire, alias))
        self.session.say(f"added {u.display}" + (f" (alias {alias})" if alias else ""))
        return None

    def do_reset(self, args: list[str]) -> None:
        self.adds.clear()
        return None

    def do_create(self, args: list[str]) -> None:
        from remotevss.client.unc import parse_unc

        if args:
            raise ScriptError("create takes no arguments (add shares first)")
        if not self.adds:
            raise ScriptError("create: no shares added")
        sets = self.session.cmd_create(
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
        self.session.cmd_expose(args, recover=self.recover)
        return None

    def do_recover(self, args: list[str]) -> None:
        if not args:
            raise ScriptError("recover SET_ID")
        self.session.cmd_recover(args)
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
        self.session.cmd_list(ids)
        return None

    def do_delete(self, args: list[str]) -> None:
        kind, ids = self._shadows_target(args, "delete")
        if kind == "all":
            self.session.cmd_delete([], all_sets=True)
        else:
            self.session.cmd_delete(ids)
        self._forget_deleted()
        return None

    def _forget_deleted(self) -> None:
        known = {(r.set_id, r.server) for r in self.session.state.sets()}
        self.created = [s for s in self.created if (s.set_id, s.server) in known]

    def do_query(self, args: list[str]) -> None:
        if not args:
            raise ScriptError(r"query \\host\share")
        self.session.cmd_query(args)
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
            raise ScriptError(f"exec {argv[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            raise ScriptError(f"exec {argv[0]} exited with status {done.returncode}")
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
                self.session.cmd_delete([], records=[(rec, None)])
            except ClientError as exc:
                self.session.note(f"cannot release set {{{s.set_id}}}: {describe_error(exc)}")
                status = status or exc.exit_code
        self.created.clear()
        return status


# ===================================================================== entry


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
            return _run_script(session, script)
        if command is None:
            raise UsageError(
                "a command is needed: add, create, list, expose, recover, delete, "
                "query (or -s FILE); see --help"
            )
        return _dispatch(session, args)
    except ClientError as exc:
        from remotevss.client.shadow import describe_error

        print(f"remotevss shadow: error: {describe_error(exc)}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print("remotevss shadow: interrupted", file=err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `list | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        session.close()


def _run_script(session: Session, path: str) -> int:
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


def _dispatch(session: Session, args: argparse.Namespace) -> int:
    cmd = args.shadow_command
    if cmd == "add":
        return session.cmd_add(args.uncs, check=not args.no_check)
    if cmd == "create":
        session.cmd_create(
            args.uncs,
            context=args.context,
            writable=args.writable,
            expose=not args.no_expose,
            recover=args.recover,
        )
        return EXIT_OK
    if cmd == "list":
        return session.cmd_list(args.ids, check=not args.no_check, prune=args.prune)
    if cmd == "expose":
        session.cmd_expose(args.ids, recover=args.recover)
        return EXIT_OK
    if cmd == "recover":
        return session.cmd_recover(args.ids)
    if cmd == "delete":
        return session.cmd_delete(
            args.ids,
            all_sets=args.all,
            server=args.server,
            share=args.share,
            set_id=args.set_id,
            copy_id=args.copy_id,
        )
    if cmd == "query":
        return session.cmd_query(args.uncs)
    return EXIT_USAGE  # pragma: no cover - argparse restricts the choices
