"""``remotevss backup ...``: init, run, list, ls, diff, restore, mount, verify, check, prune,
key, copy.

Why ``add_parser``/``run`` rather than a ``main``: the top-level ``remotevss``
command mounts these verbs; ``python -m remotevss.backup.cli`` runs them
alone (tests, and before the wiring exists).

Exit codes (docs/backup.md): 0 success; 1 failed (nothing committed for
``run``); 2 usage error; 3 done, but some files were skipped (unreadable
at backup, damaged at restore); 4 ``check``/``verify`` found damage;
5 the repository is locked by another process; 6 ``run`` committed the
point but could not release a shadow copy set (the next run will);
7 wrong passphrase (nothing was changed);
130 interrupted (SIGINT); 143 terminated (SIGTERM/SIGHUP).

The repository passphrase comes from ``--password-file``, else
``$REMOTEVSS_BACKUP_PASSWORD``, else a prompt on a terminal (asked only when
the repository is encrypted), as ``remotevss shadow`` gets its password.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remotevss.backup.progress import Progress, human

if TYPE_CHECKING:
    from remotevss.backup.index import PointRow
    from remotevss.backup.repo import Repository as RepositoryT

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_DAMAGED = 4
EXIT_LOCKED = 5
EXIT_NOT_RELEASED = 6
EXIT_WRONG_PASSPHRASE = 7
PASSWORD_ENV = "REMOTEVSS_BACKUP_PASSWORD"  # noqa: S105 - the variable's name
NEW_PASSWORD_ENV = "REMOTEVSS_BACKUP_NEW_PASSWORD"  # noqa: S105 - the variable's name
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _meta_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    return key, value


def _count_arg(text: str) -> int:
    """A ``--keep-*`` count: below 1 it would keep nothing (a negative one was a
    Python slice from the end: it removed all but a few points, or all)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _duration_arg(text: str) -> int:
    """A ``--keep-within`` duration in seconds: zero would keep no point at all."""
    from remotevss.backup.prune import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is no time at all: it would keep no point")
    return seconds


MAX_PACK_MIB = 1024  # remotevss.backup.repo.MAX_PACK_SIZE, without importing it here


def _pack_size_arg(text: str) -> int:
    """``--pack-size`` in MiB: 1 to 1024 (0 and negative sizes were taken silently)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of MiB, not {text!r}") \
            from None
    if not 1 <= n <= MAX_PACK_MIB:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PACK_MIB} (MiB), not {n}")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=os.environ.get("REMOTEVSS_REPO"),
                   help="repository directory (default: $REMOTEVSS_REPO)")
    _password_option(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _password_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the repository passphrase (default: "
                        "$REMOTEVSS_BACKUP_PASSWORD, else a prompt)")


def _read_secret_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        line = f.readline(4097).rstrip("\r\n")
    if not line or len(line) > 4096:
        raise ValueError(f"{path}: no passphrase on its first line (or longer than 4096)")
    return line


def passphrase_source(args: argparse.Namespace, confirm: bool = False,
                      env: str = PASSWORD_ENV, file_attr: str = "password_file",
                      prompt: str = "Repository passphrase: ") -> Any:
    """A callable giving the passphrase: --password-file, $REMOTEVSS_BACKUP_PASSWORD, or a
    prompt on a terminal; asked only when needed (a plain repository never asks)."""

    def get() -> str:
        path = getattr(args, file_attr, None)
        if path:
            return _read_secret_file(path)
        value = os.environ.get(env)
        if value:
            return value
        if not sys.stdin.isatty():
            raise ValueError(f"no repository passphrase: use --{file_attr.replace('_', '-')} "
                             f"or ${env} (no terminal to ask on)")
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != first:
            raise ValueError("the two passphrases differ")
        if not first:
            raise ValueError("the passphrase must not be empty")
        return first

    return get


def _passphrase_given(args: argparse.Namespace) -> bool:
    """Whether ``passphrase_source(args)`` answers without a prompt (a prompt waits for
    its turn): the same two sources it tries first."""
    return bool(getattr(args, "password_file", None) or os.environ.get(PASSWORD_ENV))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``backup`` verb and its sub-verbs to a parent's subparsers."""
    b: argparse.ArgumentParser = subparsers.add_parser(
        "backup", help="deduplicated backups into a local repository")
    configure(b)
    return b


class _Intermixed(argparse.ArgumentParser):
    """A verb whose optional positional may follow options (``ls 2 --depth 1 data``):
    plain argparse gives the optional positional its empty value at the first
    positional and then calls the later one unrecognized."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def configure(b: argparse.ArgumentParser) -> None:
    sub = b.add_subparsers(dest="backup_command", required=True)

    p = sub.add_parser("init", help="create an empty repository (encrypted unless --unencrypted)")
    _common(p)
    p.add_argument("--pack-size", type=_pack_size_arg, default=64, metavar="MiB",
                   help=f"target pack size, 1 to {MAX_PACK_MIB} (default 64)")
    p.add_argument("--unencrypted", action="store_true",
                   help="store data unencrypted (anyone who can read the repository can "
                        "read the backups)")

    p = sub.add_parser("copy", help="copy the recovery points of another repository into "
                                    "this one (e.g. a format 1 repository into an encrypted one)")
    _common(p)
    p.add_argument("--from", dest="source_repo", required=True, metavar="PATH",
                   help="the repository to copy from (read only)")
    p.add_argument("--from-password-file", metavar="FILE",
                   help="its passphrase (default: $REMOTEVSS_BACKUP_FROM_PASSWORD, else a "
                        "prompt; format 1 and unencrypted repositories need none)")

    p = sub.add_parser("key", help="list, add, remove or change the repository's passphrases")
    ksub = p.add_subparsers(dest="key_command", required=True)
    for verb, text in (("list", "list the keys (one per passphrase)"),
                       ("add", "add a key for a new passphrase"),
                       ("remove", "remove a key (not the one you opened with, not the last)"),
                       ("passwd", "change the passphrase of the key you open with")):
        kp = ksub.add_parser(verb, help=text)
        _common(kp)
        if verb in ("add", "passwd"):
            kp.add_argument("--new-password-file", metavar="FILE",
                            help=f"the new passphrase (default: ${NEW_PASSWORD_ENV}, else a "
                                 "prompt)")
        if verb == "remove":
            kp.add_argument("key_id", metavar="ID", help="key id (or a unique prefix)")

    from remotevss.client.cli import connection_options

    p = sub.add_parser("run", parents=[connection_options()],
                       help="back up SMB shares (through one shadow copy set) or directories "
                            "into a new recovery point")
    p.add_argument("--repo", default=os.environ.get("REMOTEVSS_REPO"),
                   help="repository directory (default: $REMOTEVSS_REPO)")
    _password_option(p)
    p.add_argument("sources", nargs="+", metavar="[LABEL=]PATH|UNC",
                   help="a directory, or a share \\\\host\\share (all shares are shadow-"
                        "copied together and the copies backed up); LABEL names it in the "
                        "point and keys the files cache (default: the directory's or share's "
                        "name)")
    p.add_argument("--meta", action="append", type=_meta_arg, default=[], metavar="KEY=VALUE",
                   help="metadata stored with the point (repeatable)")
    p.add_argument("--processes", type=_processes_arg, default=None, metavar="N",
                   help="worker processes reading and chunking the files of directories "
                        "(default 1; 0: threads only); started only once 32 MiB are to be read")
    g = p.add_argument_group("leaving things out (pseudo file systems such as /proc, and the "
                             "repository itself, always are)")
    g.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out what matches (repeatable): without '/' a name at any depth "
                        "(*.tmp, node_modules), with '/' a path below the source's root "
                        "(build/*.o); an excluded directory goes with all below it")
    g.add_argument("--exclude-file", action="append", default=[], metavar="FILE",
                   help="patterns as for --exclude, one a line ('#' comments)")
    g.add_argument("--exclude-caches", action="store_true",
                   help="of a directory with a valid CACHEDIR.TAG keep only that file")
    g.add_argument("--one-file-system", "-x", action="store_true",
                   help="do not enter mount points of other file systems (kept empty)")
    g = p.add_argument_group("reading snapshot shares")
    g.add_argument("--read", dest="read_mode", choices=["auto", "smb", "local"], default="auto",
                   help="auto (default): read a snapshot share's path directly when the server "
                        "is this machine and the path is readable, else over SMB; smb: always "
                        "over SMB; local: only directly")
    g.add_argument("--smb-conf", metavar="FILE",
                   help="smb.conf of the local Samba (for `net conf showshare`; fast path)")
    g.add_argument("--no-encryption", action="store_true",
                   help="sign but do not encrypt the SMB data connection")
    g.add_argument("--no-security", action="store_true",
                   help="do not store SMB security descriptors")
    g.add_argument("--smb-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="timeout of any one SMB request (default 120)")

    p = sub.add_parser("list", help="list recovery points")
    _common(p)

    p = sub.add_parser("restore", parents=[connection_options()],
                       help="restore a recovery point or part of it, to a directory or "
                            "back onto an SMB share")
    p.add_argument("--repo", default=os.environ.get("REMOTEVSS_REPO"),
                   help="repository directory (default: $REMOTEVSS_REPO)")
    _password_option(p)
    p.add_argument("point", help="point number, uuid prefix, or 'latest'")
    p.add_argument("--path", default="", help="LABEL/sub/dir inside the point")
    p.add_argument("--to", required=True,
                   help="target directory, or \\\\host\\share[\\path] to write over SMB 3 "
                        "(credentials as for run)")
    p.add_argument("--include", action="append", default=[], metavar="LABEL/PATH",
                   help="restore only this item of the point (repeatable); it lands where a "
                        "whole restore would put it")
    p.add_argument("--processes", type=_processes_arg, default=None, metavar="N",
                   help="worker processes writing files beside this one (default 1; 0: "
                        "none); started only once 500 files or 64 MiB are to be written")
    g = p.add_argument_group("restoring onto a share")
    g.add_argument("--overwrite", action="store_true",
                   help="replace existing files (default: refuse and change nothing)")
    g.add_argument("--no-security", action="store_true",
                   help="do not write the kept security descriptors")
    g.add_argument("--no-encryption", action="store_true",
                   help="sign but do not encrypt the SMB connection")
    g.add_argument("--smb-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="timeout of any one SMB request (default 120)")

    p = sub.add_parser("ls", help="list the entries of a recovery point, or of a path in it")
    p.__class__ = _Intermixed
    _common(p)
    p.add_argument("point", help="point number, uuid prefix, or 'latest'")
    p.add_argument("path", nargs="?", default="", metavar="PATH",
                   help="LABEL/sub/dir inside the point (default: all of it)")
    p.add_argument("--long", "-l", action="store_true",
                   help="mode, owner, size, mtime (local time), then the path")
    p.add_argument("--depth", type=_count_arg, metavar="N",
                   help="only N levels below PATH (1: its own entries; default: all)")

    p = sub.add_parser("diff", help="what changed between two recovery points (no file "
                                    "data is read)")
    p.__class__ = _Intermixed
    _common(p)
    p.add_argument("old", metavar="POINT1", help="point number, uuid prefix, or 'latest'")
    p.add_argument("new", metavar="POINT2", help="the point to compare it with")
    p.add_argument("path", nargs="?", default="", metavar="PATH",
                   help="compare only LABEL/sub/dir (default: the whole points)")

    p = sub.add_parser("mount", help="show every recovery point as a read-only directory "
                                      "tree (FUSE) until Ctrl-C")
    _common(p)
    p.add_argument("paths", nargs="+", metavar="[REPO] MOUNTPOINT",
                   help="the repository (default: --repo or $REMOTEVSS_REPO) and an existing "
                        "directory to mount on (what it holds is hidden while mounted)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users see the mount (FUSE allow_other; modes still apply)")

    p = sub.add_parser("verify", help="re-read and re-hash all data; name damaged files")
    _common(p)
    p.add_argument("--repair", action="store_true",
                   help="then forget what cannot be read (damaged packs are rewritten "
                        "without it) and the files cache, so that the next backup stores "
                        "that data again and mends the points that use it (needs the "
                        "repository to itself, as prune)")

    p = sub.add_parser("check", help="check structure: index, packs, trees (fast)")
    _common(p)

    p = sub.add_parser("prune", help="remove recovery points by policy and reclaim space")
    _common(p)
    p.add_argument("--keep-last", type=_count_arg, metavar="N",
                   help="keep the N newest points (N >= 1)")
    p.add_argument("--keep-within", type=_duration_arg, metavar="DURATION",
                   help="keep points newer than DURATION (e.g. 30d, 12h, 1w2d; more than 0)")
    p.add_argument("--dry-run", action="store_true", help="only say which points would go")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for running backups to finish (default: refuse "
                        "at once, naming them)")


def _meta_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif text:
        print(text)


def _progress(args: argparse.Namespace, label: str) -> Progress:
    return Progress(label, enabled=False if args.json else None)


class Terminated(BaseException):
    """SIGTERM or SIGHUP during ``backup run`` (raised so ``finally`` blocks release
    the shadow copy set)."""


def run(args: argparse.Namespace) -> int:
    """Carry out one ``backup`` sub-verb; returns the exit code."""
    if args.backup_command == "mount":
        if len(args.paths) > 2:
            print("remotevss backup mount: expected [REPO] MOUNTPOINT", file=sys.stderr)
            return EXIT_USAGE
        if len(args.paths) == 2:
            args.repo = args.paths[0]
    if not args.repo:
        print("remotevss backup: --repo (or $REMOTEVSS_REPO) is required", file=sys.stderr)
        return EXIT_USAGE
    secret = functools.cache(passphrase_source(args))  # asked at most once per command
    if args.backup_command != "init" and _passphrase_given(args):
        from remotevss.backup import kdf

        kdf.start(Path(args.repo), secret)  # runs while the rest is imported and opened
    from remotevss.backup.memory import tune_malloc

    tune_malloc()
    from remotevss.backup.repo import RepoDamaged, RepoError, RepoLocked, WrongPassphrase
    from remotevss.backup.signals import terminate_as

    try:
        with terminate_as(Terminated):
            return _dispatch(args, secret)
    except RepoLocked as exc:
        print(f"remotevss backup: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except WrongPassphrase as exc:
        print(f"remotevss backup: {exc}", file=sys.stderr)
        return EXIT_WRONG_PASSPHRASE
    except RepoDamaged as exc:  # config.json, a key file or index.sqlite
        print(f"remotevss backup: {exc}", file=sys.stderr)
        return EXIT_DAMAGED if args.backup_command in ("check", "verify") else EXIT_FAILED
    except (RepoError, OSError, ValueError) as exc:
        print(f"remotevss backup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except sqlite3.DatabaseError as exc:
        print(f"remotevss backup: index.sqlite is damaged: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    except KeyboardInterrupt:
        print("remotevss backup: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("remotevss backup: terminated", file=sys.stderr)
        return EXIT_TERMINATED


def _names_share(spec: str) -> bool:
    r"""Whether a source argument is ``[LABEL=]\\host\share`` (or ``//host/share``):
    only then is the requestor (SMB, RPC; ~0.2 s of imports) needed."""
    _label, sep, rest = spec.partition("=")
    return spec.startswith(("\\\\", "//")) or bool(sep) and rest.startswith(("\\\\", "//"))


def _dispatch(args: argparse.Namespace, secret: Callable[[], str]) -> int:
    from remotevss.backup.repo import Repository, init_repo

    repo_path = Path(args.repo)
    cmd = args.backup_command
    if cmd == "init":
        size = args.pack_size << 20  # MiB, 1 to MAX_PACK_MIB (_pack_size_arg)
        if (repo_path / "config.json").exists():  # before asking for a passphrase
            print(f"remotevss backup: {repo_path} is not empty", file=sys.stderr)
            return EXIT_FAILED
        config = init_repo(repo_path, pack_size=size, encrypted=not args.unencrypted,
                           passphrase=None if args.unencrypted else
                           passphrase_source(args, confirm=True)())
        _emit(args, config.to_json(),
              f"initialized repository {repo_path} ({config.repo_id}, "
              + ("unencrypted)" if args.unencrypted else f"encrypted: {config.encryption})"))
        return EXIT_OK
    if cmd == "key":
        return _key(args, repo_path, secret)
    if cmd == "copy":
        from remotevss.backup.copy import copy_points

        source = passphrase_source(args, env="REMOTEVSS_BACKUP_FROM_PASSWORD",
                                   file_attr="from_password_file",
                                   prompt="Source repository passphrase: ")
        with Repository(Path(args.source_repo), "read", command="backup copy (source)",
                        passphrase=source) as src, \
                Repository(repo_path, "write", command="backup copy", passphrase=secret) as dst:
            copied = copy_points(src, dst, _progress(args, "copy"))
        _emit(args, copied.to_json(),
              f"copied {len(copied.copied)} recovery points ({copied.blobs} blobs, "
              f"{human(copied.bytes)}); {len(copied.skipped)} already there")
        return EXIT_OK
    if cmd == "run":
        from remotevss.backup.backup import local_sources, run_backup
        from remotevss.backup.listing import prefetch_listings
        from remotevss.backup.memory import collect_rarely

        if any(_names_share(spec) for spec in args.sources):
            from remotevss.backup.requestor import split_specs
            from remotevss.client.errors import UsageError

            try:
                local_specs, shares = split_specs(args.sources)
            except UsageError as exc:
                print(f"remotevss backup: {exc}", file=sys.stderr)
                return EXIT_USAGE
            return _run_shares(args, repo_path, local_specs, shares)
        excludes = _excludes(args)
        sources = local_sources(args.sources, excludes)
        # The collector rarely from the first listing on (memory.py), and the trees
        # listed while the passphrase's scrypt runs (it releases the GIL).
        collect_rarely()
        ahead = prefetch_listings(sources)
        try:
            with Repository(repo_path, "write", command="backup run",
                            passphrase=secret) as repo:
                if repo.interrupted:
                    print(f"remotevss backup: the previous run (pid "
                          f"{repo.interrupted.get('pid')}, started "
                          f"{repo.interrupted.get('started')}) was interrupted; its "
                          "unfinished data was discarded", file=sys.stderr)
                point = run_backup(repo, sources, _point_meta(args, excludes),
                                   _progress(args, "backup"), ahead=ahead, **_processes(args))
        finally:
            for a in ahead.values():
                a.stop()
        _emit(args, point.__dict__, _point_line(point))
        return EXIT_PARTIAL if point.stats["error_count"] else EXIT_OK
    if cmd == "list":
        with Repository(repo_path, "read", command="backup list", passphrase=secret) as repo:
            points = repo.points()
        lines = []
        for p in points:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.time_ns / 1e9))
            meta = " ".join(f"{k}={_meta_text(v)}" for k, v in sorted(p.meta.items()))
            lines.append(f"{p.id:5d}  {p.uuid[:12]}  {when}  {p.stats.get('files', 0):8d} files"
                         f"  {human(p.stats.get('bytes_total', 0)):>10}  {meta}".rstrip())
        _emit(args, [p.describe() for p in points], "\n".join(lines))
        return EXIT_OK
    if cmd == "restore":
        from remotevss.backup.restore import PROCESSES, restore
        from remotevss.backup.smb_restore import is_share_target

        if is_share_target(args.to):
            return _restore_to_share(args, repo_path, secret)
        if args.overwrite:
            print("remotevss backup: --overwrite applies to a restore onto a share (a "
                  "local restore replaces files)", file=sys.stderr)
            return EXIT_USAGE

        writers = PROCESSES if args.processes is None else args.processes
        with Repository(repo_path, "read", command="backup restore",
                        passphrase=secret) as repo, _stops_cleanly():
            chosen = repo.find_point(args.point)
            _unescape_paths(repo, chosen, args)
            if args.include:
                from remotevss.backup.restore_items import restore_items

                result = restore_items(repo, chosen, args.to, args.path, args.include,
                                       _progress(args, "restore"), writers)
            else:
                result = restore(repo, chosen, args.to, args.path, _progress(args, "restore"),
                                 writers)
        _emit(args, result.to_json(),
              f"restored {result.files} files, {result.dirs} directories, "
              f"{human(result.bytes)} to {args.to}"
              + (f"; {len(result.errors)} failed" if result.errors else ""))
        return EXIT_PARTIAL if result.errors else EXIT_OK
    if cmd in ("ls", "diff"):
        from remotevss.backup import browse

        with Repository(repo_path, "read", command=f"backup {cmd}", passphrase=secret) as repo:
            try:
                if cmd == "ls":
                    browse.print_ls(repo, repo.find_point(args.point), args.path, args.long,
                                    args.json, args.depth, sys.stdout)
                else:
                    browse.print_diff(repo, repo.find_point(args.old),
                                      repo.find_point(args.new), args.path, args.json,
                                      sys.stdout)
                sys.stdout.flush()
            except BrokenPipeError:  # `ls | head`: the reader has all it wanted
                browse.quiet_broken_pipe()
        return EXIT_OK
    if cmd == "mount":
        from remotevss.backup.mount import check_mountpoint, mount

        mountpoint = Path(args.paths[-1])
        check_mountpoint(mountpoint)
        with Repository(repo_path, "read", passphrase=secret):
            pass  # a bad repository (or passphrase) is named before libfuse starts

        def ready() -> None:  # once the kernel has the mount: a failed mount says only why
            print(f"remotevss backup: mounted {repo_path} on {mountpoint} (read-only); "
                  "Ctrl-C or umount ends it", file=sys.stderr, flush=True)

        try:
            mount(repo_path, mountpoint, allow_other=args.allow_other, passphrase=secret,
                  on_ready=ready)
        except RuntimeError as exc:
            print(f"remotevss backup: cannot mount on {mountpoint}: libfuse returned {exc}",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"remotevss backup: unmounted {mountpoint}", file=sys.stderr)
        return EXIT_OK
    if cmd in ("check", "verify"):
        from remotevss.backup.verify import check, verify

        repair = getattr(args, "repair", False)
        with Repository(repo_path, "exclusive" if repair else "read", command=f"backup {cmd}",
                        passphrase=secret) as repo:
            report = (check(repo) if cmd == "check"
                      else verify(repo, _progress(args, "verify"), repair=repair))
        lines = [f"error: {e}" for e in report.errors] + [f"note: {n}" for n in report.notes]
        lines += [f"affected: point {a['point']} ({a['uuid'][:12]}): {a['path']}"
                  for a in report.affected]
        lines.append(f"{cmd}: {report.packs} packs, {report.blobs} blobs, {report.points} "
                     f"points: " + ("ok" if report.ok else f"{len(report.errors)} problems"))
        _emit(args, report.to_json(), "\n".join(lines))
        return EXIT_OK if report.ok else EXIT_DAMAGED
    if cmd == "prune":
        from remotevss.backup.prune import prune

        with Repository(repo_path, "exclusive", command="backup prune", passphrase=secret,
                        wait=args.wait) as repo:
            res = prune(repo, args.keep_last, args.keep_within, dry_run=args.dry_run,
                        progress=_progress(args, "prune"))
        if not args.json:  # with --json they are in the result's "errors"
            for error in res.errors:
                print(f"remotevss backup: prune: {error}", file=sys.stderr)
        would = "would remove" if args.dry_run else "removed"
        _emit(args, {**res.to_json(), "dry_run": args.dry_run},
              f"{would} points {res.removed_points or 'none'}, kept {res.kept_points}; "
              f"packs {'to delete' if args.dry_run else 'deleted'} {res.packs_deleted} "
              f"(rewritten {res.packs_rewritten}"
              + (f"; {res.orphans_removed} leftover pack"
                 f"{'' if res.orphans_removed == 1 else 's'} removed"
                 if res.orphans_removed else "")
              + f"); {human(res.bytes_before)} -> "
              f"{'about ' if args.dry_run else ''}{human(res.bytes_after)}")
        return EXIT_FAILED if res.errors else EXIT_OK
    return EXIT_USAGE  # pragma: no cover


def _point_line(point: Any) -> str:
    s = point.stats
    return (f"recovery point {point.id} ({point.uuid[:12]}): {s['files']} files, "
            f"{human(s['bytes_total'])}, read {human(s['bytes_read'])}, "
            f"added {human(s['new_stored'])} in {s['seconds']:.1f} s"
            + (f"; {s['error_count']} not backed up or changed while read (named above)"
               if s["error_count"] else ""))


def _processes_arg(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 64:
        raise argparse.ArgumentTypeError("must be 0 to 64")
    return n


def _processes(args: argparse.Namespace) -> dict[str, int]:
    return {} if args.processes is None else {"processes": args.processes}


def _excludes(args: argparse.Namespace) -> Any:
    """The run's rules of what is left out (remotevss.backup.excludes)."""
    from remotevss.backup.excludes import Excludes, read_patterns

    patterns = list(args.exclude)
    for path in args.exclude_file:
        patterns += read_patterns(path)
    return Excludes(patterns, caches=args.exclude_caches,
                    one_file_system=args.one_file_system)


def _point_meta(args: argparse.Namespace, excludes: Any) -> dict[str, Any]:
    meta = dict(args.meta)
    rules = excludes.describe() if excludes is not None else {}
    if rules:
        meta.setdefault("excludes", rules)
    return meta


def _run_shares(args: argparse.Namespace, repo_path: Path, local_specs: list[str],
                shares: list[Any]) -> int:
    """``backup run \\\\host\\share ...``: see remotevss.backup.requestor."""
    from remotevss.backup.repo import Repository
    from remotevss.backup.requestor import RunSettings, ShareRun, backup_shares
    from remotevss.backup.smb import SmbError
    from remotevss.client.cli import Session, Settings
    from remotevss.client.errors import ClientError, UsageError
    from remotevss.client.shadow import describe_error

    session = Session(Settings.from_args(args))
    outcome = ShareRun()
    try:
        settings = RunSettings(
            session.credentials(), session.options(),
            state_path=Path(args.state) if getattr(args, "state", None) else None,
            read_mode=args.read_mode, smb_conf=args.smb_conf,
            encrypt=not args.no_encryption, security=not args.no_security,
            smb_timeout=args.smb_timeout, follow_owner=session.settings.follow_owner,
            resolve=session.settings.resolve, excludes=_excludes(args))
        with Repository(repo_path, "write", command="backup run",
                        passphrase=passphrase_source(args)) as repo:
            if repo.interrupted:
                print(f"remotevss backup: the previous run (pid {repo.interrupted.get('pid')}, "
                      f"started {repo.interrupted.get('started')}) was interrupted; its "
                      "unfinished data was discarded", file=sys.stderr)
            backup_shares(repo, shares, settings, local_specs=local_specs,
                          meta=_point_meta(args, settings.excludes),
                          progress=_progress(args, "backup"), run=outcome)
    except UsageError as exc:
        print(f"remotevss backup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ClientError, SmbError) as exc:
        print(f"remotevss backup: {describe_error(exc)}; nothing was committed",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        _report_release(outcome)
    point = outcome.point
    assert point is not None
    if unapplied := point.meta.get("one_file_system_not_applied"):
        print(f"remotevss backup: note: --one-file-system was not applied to "
              f"{', '.join(unapplied)}: read over SMB, where mount points do not show "
              "(--read local reads a share of this machine directly)", file=sys.stderr)
    _emit(args, {**point.__dict__, **outcome.to_json()}, _point_line(point))
    if outcome.release_failed:
        return EXIT_NOT_RELEASED
    return EXIT_PARTIAL if point.stats["error_count"] else EXIT_OK


def _stops_cleanly() -> contextlib.AbstractContextManager[None]:
    """A restore's Ctrl-C (or SIGTERM) stops it between files: nothing truncated is
    left under a file's name (remotevss.backup.signals.stop_at_safe_points)."""
    from remotevss.backup.signals import stop_at_safe_points

    return stop_at_safe_points(
        lambda text: print(f"remotevss backup: {text}", file=sys.stderr, flush=True))


def _unescape_paths(repo: RepositoryT, point: PointRow, args: argparse.Namespace) -> None:
    """``--path`` and ``--include`` as the point stores them, also when given as ``ls``
    prints them (escaped: a newline as ``\\n``, a non-UTF-8 byte as ``\\xNN``), since
    ``ls`` output is meant to be fed to a restore.  A path in neither form is left as
    given, for the restore to refuse by name."""
    from remotevss.backup import browse

    def stored(path: str) -> str:
        if "\\" not in path:
            return path
        try:
            return browse.locate(repo, point, path)[0]
        except browse.PathNotFound:
            return path

    args.path = stored(args.path)
    args.include = [stored(item) for item in args.include]


def _restore_to_share(args: argparse.Namespace, repo_path: Path, secret: Any) -> int:
    """``backup restore POINT --to \\\\host\\share\\path``: see remotevss.backup.smb_restore."""
    from remotevss.backup.repo import Repository
    from remotevss.backup.smb import SmbError, SmbSession
    from remotevss.backup.smb_restore import RestoreRefused, parse_target, restore_to_share
    from remotevss.client.cli import Session, Settings
    from remotevss.client.errors import UsageError

    try:
        target = parse_target(args.to)
        session = Session(Settings.from_args(args))
        creds, options = session.credentials(), session.options()
    except UsageError as exc:
        print(f"remotevss backup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with Repository(repo_path, "read", command="backup restore", passphrase=secret) as repo:
        chosen = repo.find_point(args.point)
        _unescape_paths(repo, chosen, args)
        try:
            # The one host the user named; nothing is followed to another.
            with SmbSession(target.unc.host, username=creds.username, password=creds.password,
                            domain=creds.domain, nt_hash=creds.nt_hash,
                            kerberos=creds.kerberos(), port=options.port,
                            encrypt=not args.no_encryption, timeout=args.smb_timeout,
                            connect_timeout=options.connect_timeout) as smb, _stops_cleanly():
                result = restore_to_share(repo, chosen, smb, target, args.path, args.include,
                                          overwrite=args.overwrite,
                                          security=not args.no_security,
                                          progress=_progress(args, "restore"))
        except RestoreRefused as exc:
            print(f"remotevss backup: {exc}", file=sys.stderr)
            if args.json:
                _emit(args, {"refused": exc.conflicts}, "")
            return EXIT_FAILED
        except SmbError as exc:
            print(f"remotevss backup: {exc}", file=sys.stderr)
            return EXIT_FAILED
    _emit(args, result.to_json(),
          f"restored {result.files} files, {result.dirs} directories, "
          f"{human(result.bytes)} to {result.target}"
          + (f"; {len(result.skipped)} skipped" if result.skipped else "")
          + (f"; {len(result.errors)} failed" if result.errors else "")
          + (f"; {len(result.warnings)} warnings" if result.warnings else ""))
    if result.errors and not (result.files or result.dirs):
        return EXIT_FAILED  # nothing at all was restored
    return EXIT_PARTIAL if result.errors or result.skipped else EXIT_OK


def _report_release(outcome: Any) -> None:
    for r in outcome.leftovers:
        print(f"remotevss backup: shadow copy set {{{r.set_id}}} on {r.server}: {r.detail}",
              file=sys.stderr)
    for r in outcome.released:
        if not r.released:
            print(f"remotevss backup: shadow copy set {{{r.set_id}}} on {r.server} was NOT "
                  f"released: {r.detail}", file=sys.stderr)


def _key(args: argparse.Namespace, repo_path: Path, secret: Any) -> int:
    """``backup key list|add|remove|passwd``: one key file per passphrase."""
    import blake3

    from remotevss.backup import keys as keyfiles
    from remotevss.backup.crypto import Keys
    from remotevss.backup.packs import fsync_dir
    from remotevss.backup.repo import RepoError, Repository

    with Repository(repo_path, "read", command=f"backup key {args.key_command}",
                    passphrase=secret) as repo:
        if not isinstance(repo.codec, Keys):
            raise RepoError(f"{repo_path}: the repository is not encrypted: it has no keys")
        current = repo.key_id or ""
        digest = blake3.blake3((repo_path / "config.json").read_bytes()).hexdigest()
        verb = args.key_command
        if verb == "list":
            rows: list[dict[str, Any]] = []
            for k in keyfiles.list_keys(repo_path):
                if isinstance(k, keyfiles.DamagedFile):
                    rows.append({"error": str(k)})
                else:
                    rows.append({"id": k.id, "current": k.id == current, "created": k.created,
                                 "host": k.host, "user": k.user})
            _emit(args, rows, "\n".join(
                r.get("error") or f"{'*' if r['current'] else ' '} {r['id']}  {r['created']}  "
                                  f"{r['user']}@{r['host']}" for r in rows))
            return EXIT_FAILED if any("error" in r for r in rows) else EXIT_OK
        if verb in ("add", "passwd"):
            new = passphrase_source(args, confirm=True, env=NEW_PASSWORD_ENV,
                                    file_attr="new_password_file",
                                    prompt="New passphrase: ")()
            key_id = keyfiles.add_key(repo_path, repo.codec, new, repo.config.repo_id, digest)
            if verb == "passwd":  # the new key is durable before the old one goes
                (repo_path / keyfiles.KEYS_DIR / f"{current}.json").unlink()
                fsync_dir(repo_path / keyfiles.KEYS_DIR)
            _emit(args, {"added": key_id, "removed": current if verb == "passwd" else None},
                  f"added key {key_id}" + (f", removed key {current}" if verb == "passwd"
                                           else ""))
            return EXIT_OK
        removed = keyfiles.remove_key(repo_path, args.key_id, current)
        _emit(args, {"removed": removed}, f"removed key {removed}")
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from remotevss.backup import kdf

    kdf.start_from_argv(sys.argv[1:] if argv is None else argv)  # before the parser is built
    parser = argparse.ArgumentParser(prog="remotevss backup")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
