"""The ``remotevss`` command line (argparse: no dependency, diskshadow-like verbs)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from remotevss import __version__

if TYPE_CHECKING:
    import argparse

    from remotevss.agent.config import AgentConfig, ShareConfig

# argparse, logging and dataclasses load in main(), after a backup command has
# started its passphrase's scrypt (kdf.start_from_argv): ~10 ms earlier.


def _share_arg(text: str) -> ShareConfig:
    import argparse

    from remotevss.agent.config import ShareConfig

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError("expected NAME=PATH")
    return ShareConfig(name, path)


def build_parser(agent_only: bool = False, backup_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``agent_only``: just the agent's verb, so the resident
    agent never imports the client, backup and setup packages (~2 MB, issue 13);
    ``backup_only``: just ``backup``, so a backup command does not wait ~55 ms for
    the agent's and the admin commands' modules (asyncio among them) to load."""
    import argparse

    p = argparse.ArgumentParser(prog="remotevss", description="Remote VSS (MS-FSRVP) for Linux")
    p.add_argument("--version", action="version", version=f"remotevss {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    if backup_only:
        from remotevss.backup import cli as backup_only_cli

        backup_only_cli.add_parser(sub)
        return p

    a = sub.add_parser("agent", help="run the FSRVP agent")
    a.add_argument("--config", help="TOML configuration file (default: built-in defaults)")
    a.add_argument("--socket", dest="socket_path", help="local unix socket path")
    a.add_argument("--socket-group", help="group allowed to use the local socket")
    a.add_argument("--state-dir", help="directory of the journal")
    a.add_argument("--expose-dir", help="where exposed snapshot shares are published")
    a.add_argument("--mode", choices=["spec", "samba"], help="protocol reading (default spec)")
    a.add_argument("--sequence-timeout", type=float, help="seconds; 0 disables the timer")
    a.add_argument(
        "--share",
        action="append",
        type=_share_arg,
        metavar="NAME=PATH",
        help="a share to serve (repeatable; adds to the config file's)",
    )
    a.add_argument("-v", "--verbose", action="count", default=0)
    a.add_argument("--log-format", choices=["text", "json"], help="log lines (default text)")
    a.add_argument("--trace", action="store_true", default=None,
                   help="log every PDU and effect (the vsstrace equivalent)")
    a.add_argument("--print-unit", action="store_true",
                   help="print the systemd unit file for this installation and exit")

    if agent_only:
        return p
    from remotevss.agent import admin_cli
    from remotevss.backup import cli as backup_cli
    from remotevss.client import cli as shadow_cli
    from remotevss.setup import cli as setup_cli

    d = sub.add_parser(
        "demo", help="end-to-end demo: a private Samba, the agent, a loop btrfs (needs root)"
    )
    d.add_argument("-v", "--verbose", action="count", default=0)

    shadow_cli.add_parser(sub)
    backup_cli.add_parser(sub)
    admin_cli.add_parsers(sub)
    setup_cli.add_parsers(sub)
    return p


#: Extension modules that link OpenSSL (libssl, libcrypto): asyncio imports ssl if it
#: can, hashlib and hmac prefer OpenSSL's digests.  The agent speaks no TLS and
#: hashes a few hundred bytes per NTLM PDU (MD5, which the interpreter has built
#: in), so keeping OpenSSL out of its process saves ~4.4 MB resident (issue 13).
OPENSSL_MODULES = ("ssl", "_ssl", "_hashlib")


@contextlib.contextmanager
def _without_openssl() -> Iterator[None]:
    """Import the agent with OPENSSL_MODULES hidden: asyncio then has no TLS and
    hashlib/hmac use the built-in digests.  Afterwards they are importable again
    (prometheus-client, with ``[metrics] port``, needs ssl), at their usual cost."""
    hidden = [m for m in OPENSSL_MODULES if m not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _verb(argv: list[str]) -> str:
    """The first word that is not an option (the subcommand, if any)."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = _verb(argv)
    if verb == "backup":  # the passphrase's scrypt first: it runs beside the imports
        from remotevss.backup import kdf

        kdf.start_from_argv(argv[argv.index(verb) + 1:])
    import logging

    args = build_parser(agent_only=verb == "agent", backup_only=verb == "backup").parse_args(argv)
    level = logging.WARNING - 10 * (getattr(args, "verbose", 0) or 0)
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "agent":
        if args.print_unit:
            from remotevss.agent import admin_cli

            try:
                print(admin_cli.unit_text(config=args.config), end="")
            except ValueError as exc:
                print(f"remotevss: {exc}", file=sys.stderr)
                return 2
            return 0
        from remotevss.agent.config import ConfigError, load_config

        with _without_openssl():
            import asyncio
            from dataclasses import replace

            from remotevss.agent.events import configure_logging
            from remotevss.agent.main import run_agent

        def configure() -> AgentConfig:  # at start and again on SIGHUP
            config = load_config(
                args.config,
                socket_path=args.socket_path,
                socket_group=args.socket_group,
                state_dir=args.state_dir,
                expose_dir=args.expose_dir,
                mode=args.mode,
                sequence_timeout=args.sequence_timeout,
                shares=args.share,
            )
            log_overrides = {"format": args.log_format, "trace": args.trace}
            return replace(config, log=replace(
                config.log, **{k: v for k, v in log_overrides.items() if v is not None}))

        try:
            config = configure()
        except ConfigError as exc:
            print(f"remotevss: configuration error: {exc}", file=sys.stderr)
            return 2
        configure_logging(config.log, args.verbose)
        return asyncio.run(run_agent(config, reload=configure, verbose=args.verbose))
    if args.command in ("setup", "doctor"):
        from remotevss.setup.cli import run as setup_run

        return setup_run(args)
    if args.command in ("status", "storage", "gc", "sets"):
        from remotevss.agent import admin_cli

        return admin_cli.run(args)
    if args.command == "demo":
        from remotevss.demo import run_demo

        return run_demo(args.verbose)
    if args.command == "shadow":
        from remotevss.client import cli as shadow_cli

        return shadow_cli.run(args)
    if args.command == "backup":
        from remotevss.backup import cli as backup_cli

        return backup_cli.run(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
