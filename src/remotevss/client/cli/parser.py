"""The ``remotevss shadow`` parser, and :class:`Settings`: what its options say.

Why apart from the commands: ``remotevss --help`` and ``remotevss backup``
build this parser on every start, so this module imports nothing beyond
argparse and the context table; ``remotevss backup run`` reuses the option
set through :func:`connection_options`.

Rules: every connection, credential, output and state option is accepted
before and after the command (the copies on the commands default to
SUPPRESS); a new option needs a field of the same name in :class:`Settings`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from remotevss.fsrvp import contexts

AUTH_LEVEL_CHOICES = ("privacy", "integrity", "none")


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
    c.add_argument(
        "--context",
        type=contexts.canonical_name,  # file_share_backup spells file-share-backup too
        choices=contexts.NAMES,
        default="backup",
    )
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
