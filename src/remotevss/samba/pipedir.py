"""Where smbd looks for the socket behind ``\\pipe\\FssagentRpc``, and that directory's rules.

Why computed from Samba's own config: smbd connects to
``<external_rpc_pipe:socket_dir or ncalrpc dir>/np/<pipe name, lower case>``
(``source3/rpc_client/local_np.c``); guessing ``/run/samba`` breaks private
or distribution-specific layouts.  Why the strict directory: anyone who can
connect can forge the identity blob, and samba-dcerpcd refuses an ``np``
directory that is not owned by its uid with mode exactly 0700
(``directory_create_or_exist_strict``), so we keep it exactly that way.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

log = logging.getLogger("remotevss.samba")

PIPE_NAME = "fssagentrpc"  # \pipe\FssagentRpc, lower-cased as smbd does


class PipeDirError(RuntimeError):
    """Samba's config cannot be read, or the directory is unsafe."""


def samba_parameter(config_file: str, name: str) -> str:
    """One [global] parameter as smbd computes it ("" if unset).

    smbd's own (source3) loadparm, in samba/loadparm.py's child (the source4
    one behind ``samba.param`` refuses ``include = registry``, which
    registry-share setups need); the snapshot is this process's
    (samba/conf.py ``shared_conf``), so the agent reads smb.conf once."""
    from remotevss.samba._lib import SambaUnavailable
    from remotevss.samba.conf import SambaConfigError, shared_conf

    try:
        value = shared_conf(config_file).get(name)
    except SambaUnavailable:  # python3-samba missing: ask testparm
        return _testparm(config_file, name)
    except SambaConfigError as exc:
        raise PipeDirError(str(exc)) from exc
    return "" if value is None else str(value)


def _testparm(config_file: str, name: str) -> str:
    try:
        out = subprocess.run(
            ["testparm", "-s", "--parameter-name", name, config_file],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PipeDirError(f"cannot read {name!r} from {config_file}: {exc}") from exc
    return out.stdout.strip()


def default_pipe_dir(config_file: str) -> Path:
    """``<socket dir>/np``, the socket dir being what smbd 4.17 uses."""
    socket_dir = samba_parameter(config_file, "external_rpc_pipe:socket_dir")
    if not socket_dir:
        socket_dir = samba_parameter(config_file, "ncalrpc dir")
    if not socket_dir:
        raise PipeDirError(f"{config_file}: Samba reports no 'ncalrpc dir'")
    return Path(socket_dir) / "np"


def _make_parents(path: Path) -> None:
    """Create the missing directories of ``path`` with mode 0755 whatever the umask
    (Samba makes its ncalrpc directory 0755; an admin's umask 077 gave 0700)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o755)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, left as it is
        os.chmod(d, 0o755)  # noqa: S103 - what Samba uses for this directory


def ensure_pipe_dir(path: Path) -> None:
    """Create ``path`` owned by us with mode 0700 (parent 0755), or check and fix its mode.

    A directory owned by another uid, or a symlink, is refused: its owner
    could put a socket of their own in our place."""
    _make_parents(path.parent)
    try:
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PipeDirError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise PipeDirError(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        log.warning("%s had mode %o; setting 0700 (Samba requires it)", path, mode)
        os.chmod(path, 0o700)


RPCD_FSRVP = Path("/usr/libexec/samba/rpcd_fsrvp")


def takeover_risk(config_file: str, rpcd_fsrvp: Path = RPCD_FSRVP) -> str:
    """Why Samba's own rpcd_fsrvp is likely to take the socket ("" if no sign of it).

    With on-demand helpers, the first failed pipe open makes smbd start
    ``samba-dcerpcd --libexec-rpcds``, which binds every ``rpcd_*`` it finds."""
    on_demand = samba_parameter(config_file, "rpc start on demand helpers")
    if on_demand.strip().lower() in ("yes", "true", "1") and os.access(rpcd_fsrvp, os.X_OK):
        return (
            f"'rpc start on demand helpers' is on and {rpcd_fsrvp} is executable: "
            "the first samba-dcerpcd smbd starts will replace our socket"
        )
    return ""
