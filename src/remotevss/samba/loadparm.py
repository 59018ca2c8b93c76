"""smb.conf as smbd reads it, as a JSON snapshot: ``python -m remotevss.samba.loadparm SMB_CONF``.

Why a child process: python-samba's loadparm (``samba.samba3.param``) and
``samba.smbconf`` cost a process ~17 MB resident for good, and the agent
needs from them only a handful of globals and each share's path and flags.
So Samba's own parser runs here, in a short-lived child (~75 ms, see
docs/samba.md), which prints what the agent needs and exits; the agent
(samba/conf.py ``SambaConf``) runs it again only when smb.conf or an
included file changes.  Samba's parser decides everything: includes,
``copy =``, synonyms, ``include = registry`` globals; registry *shares* are
left out (the agent reads them live from registry.tdb, samba/regdb.py).

Output, one JSON object on stdout: ``{"ok": true, "snapshot": {...}}``
(:func:`take`), or ``{"ok": false, "kind": "<class>", "error": "..."}`` with
exit status 1.  :func:`take` also runs in-process for python-samba's worker
(samba/worker.py), which has loadparm loaded anyway.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # typing costs the short-lived child a few ms
if TYPE_CHECKING:
    from typing import Any

#: The [global] parameters the agent reads (agent/samba_components.py,
#: samba/registry_exposer.py, samba/light.py, samba/pipedir.py).
GLOBALS = (
    "netbios name", "state directory", "lock directory", "private dir", "pid directory",
    "clustering", "kerberos method", "dedicated keytab file", "winbind separator", "realm",
    "server role", "security", "domain logons", "ncalrpc dir", "external_rpc_pipe:socket_dir",
    "rpc start on demand helpers",
)  # fmt: skip
#: Per file share: what decides whether and where it can be snapshotted (samba/shares.py).
SHARE_PARAMS = ("path", "printable", "available")
MAX_FILES = 64  # smb.conf and its includes, followed at most


def quiet_load(lp: Any, config_file: str) -> None:
    """``lp.load`` without Samba's debug output on our stderr (smb.conf's ``log level``,
    2 and up prints ``Processing section "[x]"`` per share per load, is for smbd's
    logs), and without registry shares: loadparm would load every one and keep
    registry.tdb open for the life of the process (registry shares are read live
    from the file, samba/regdb.py).  Values set before the load are command-line
    settings, which the file does not override."""
    lp.set("log level", "0")
    lp.set("registry shares", "no")
    lp.load(config_file)


def stamp(path: str) -> list[int] | None:
    """What changes when a file is rewritten: mtime, size, inode (None: missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def param_key(name: str) -> str:
    """Normalize a parameter name the way loadparm compares them (``strwicmp``)."""
    return name.lower().replace(" ", "").replace("_", "").replace("\t", "")


def _plain(value: Any) -> Any:
    """A loadparm value as JSON (bools, ints and strings as they are; lists of str)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


def read_files(smbconf: Any, config_file: str) -> tuple[list[Any], dict[str, Any]]:
    """Each file's sections as written (``[[path, [[section, [[k, v], ...]], ...]], ...]``)
    and every file's stamp: smb.conf, then its includes (``%``-includes and
    ``include = registry`` are not files to follow).  A relative include is opened
    from the working directory, as loadparm opens it (``/`` for the agent under
    systemd).  Lines of an included file before its first ``[section]`` belong to
    the section that includes it, as loadparm reads them (a site file of
    ``[global]`` settings without a header).  A missing include is stamped None, so
    creating it counts as a change."""
    stamps: dict[str, Any] = {}
    files: list[Any] = []
    pending = [(config_file, "global")]
    while pending and len(stamps) < MAX_FILES:
        path, context = pending.pop(0)
        if path in stamps:
            continue
        stamps[path] = stamp(path)
        if stamps[path] is None:
            continue
        try:
            sections = smbconf.init_txt(path).get_config()
        except Exception:  # unreadable include: loadparm skipped it too  # noqa: S112
            continue
        parsed = [[context if n is None else str(n), [[str(k), str(v)] for k, v in p]]
                  for n, p in sections]  # fmt: skip
        files.append([path, parsed])
        for section, params in parsed:
            for key, value in params:
                # "registry" is not a file; per-user/per-client (%) includes are not followed
                if param_key(key) == "include" and value.lower() != "registry" \
                        and "%" not in value:  # fmt: skip
                    pending.append((os.path.abspath(value), str(section)))  # cwd, as loadparm
    return files, stamps


def registry_shares_on(files: list[Any]) -> bool:
    """smbd loads registry shares (``registry shares = yes``, implied by
    ``include = registry`` and ``config backend = registry``), as the files say:
    the loadparm here has it off (:func:`quiet_load`)."""
    value, backend = "no", ""
    for _path, sections in files:
        for section, params in sections:
            if section.casefold() != "global":
                continue
            for k, v in params:
                key = param_key(k)
                if key == "registryshares":
                    value = v
                elif key == "include" and v.strip().lower() == "registry":
                    value = "yes"  # process_registry_globals sets it
                elif key == "configbackend":
                    backend = v
    on = value.strip().lower() in ("yes", "true", "1", "on")
    return on or backend.strip().lower() == "registry"


def take(lp: Any, smbconf: Any, config_file: str) -> dict[str, Any]:
    """Load ``config_file`` into ``lp`` and describe it (see the module doc).

    Stamps are taken before either parser reads the files and compared after: a
    file rewritten meanwhile is read again (up to three times), so a snapshot
    never carries a stamp newer than its content."""
    for _attempt in range(3):
        files, stamps = read_files(smbconf, config_file)
        quiet_load(lp, config_file)
        if all(stamp(p) == s for p, s in stamps.items()):
            break
    present = {str(n).casefold() for _p, sections in files for n, _ in sections}
    services = []
    for s in lp.services():
        name = str(s)
        if name.casefold() in present:  # a reload never drops a deleted section
            services.append([name, {k: _plain(lp.get(k, name)) for k in SHARE_PARAMS}])
    return {
        "config_file": config_file,
        "globals": {k: _plain(lp.get(k)) for k in GLOBALS},
        "services": services,
        "files": files,
        "stamps": [[p, s] for p, s in stamps.items()],
        "registry_shares": registry_shares_on(files),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m remotevss.samba.loadparm SMB_CONF", file=sys.stderr)
        return 2
    config_file = os.path.abspath(argv[0])
    try:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Samba config {config_file} does not exist")
        try:
            from samba import smbconf
            from samba.samba3 import param
        except ImportError as exc:
            raise ImportError(f"cannot import python-samba ({exc}); install python3-samba") from exc
        try:
            snapshot = take(param.get_context(), smbconf, config_file)
        except RuntimeError as exc:  # "Unable to load file ...": Samba's own words
            raise RuntimeError(f"cannot load Samba config {config_file}: {exc}") from exc
        out: dict[str, Any] = {"ok": True, "snapshot": snapshot}
    except Exception as exc:  # reported to the agent, which decides
        out = {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
