r"""Credentials as smbclient takes them, turned into a :class:`Credentials`.

Sources: ``-U [DOMAIN\]USER[%PASSWORD]`` (also ``USER@REALM``), ``-W DOMAIN``,
``-A FILE`` (``username =``, ``password =``, ``domain =`` lines); what ``-U``
says wins over ``-W`` and ``-A``, and ``-W`` over ``-A``.  Then ``--nt-hash``
(``LM:NT`` accepted), ``REMOTEVSS_USER`` when there is no ``-U``,
``REMOTEVSS_PASSWORD`` when nothing else gave a password, and last a prompt
on a terminal.  ``-k`` asks for Kerberos; without ``-k`` or ``--no-kerberos``
a ccache in ``KRB5CCNAME`` is used when no password or hash was given.

Why its own module: the rules are the user-visible contract of every
command that connects (``shadow`` and ``backup``), and they are easy to get
subtly wrong; nothing here touches the network.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from remotevss.client.errors import UsageError

if TYPE_CHECKING:
    from remotevss.client.cli.parser import Settings
    from remotevss.client.connection import Credentials


def read_auth_file(path: str) -> dict[str, str]:
    """``key = value`` lines of an smbclient authentication file, keys lower-cased."""
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


def build_credentials(s: Settings) -> Credentials:
    """The credentials ``s`` names (see the module docstring); UsageError if none."""
    from remotevss.client.connection import Credentials, ccache_path

    user = s.user if s.user is not None else os.environ.get("REMOTEVSS_USER", "")
    password: str | None = None
    domain = s.workgroup or ""
    if s.authentication_file:
        f = read_auth_file(s.authentication_file)
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
