"""Run the agent: reconcile, serve, stop gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from remotevss.agent.authz import policy_for
from remotevss.agent.config import AgentConfig, ConfigError
from remotevss.agent.ops import Operations
from remotevss.agent.rpc_security import RpcAuthenticator, SambaAuthNames
from remotevss.agent.service import AgentService
from remotevss.agent.transports.samba_pipe import PipeListener
from remotevss.agent.transports.unix import serve_unix, socket_identity, unlink_if_ours
from remotevss.samba.pipedir import default_pipe_dir, takeover_risk

log = logging.getLogger("remotevss.agent")


def build_service(config: AgentConfig) -> tuple[AgentService, SambaAuthNames]:
    """The service, with Samba's shares and registry exposure when behind Samba, and
    what smb.conf says about user names and Kerberos (defaults without Samba).
    ConfigError when Samba's configuration cannot serve (read before anything starts)."""
    if not config.samba.config_file:
        return AgentService(config, policy=policy_for(config)), SambaAuthNames()
    from remotevss.agent.samba_components import make_samba_components
    from remotevss.samba.conf import SambaConfigError
    from remotevss.shares.exposer import ExposeError

    try:
        samba = make_samba_components(config)
    except (SambaConfigError, ExposeError) as exc:  # smb.conf missing, registry shares off
        raise ConfigError(f"[samba] config_file: {exc}") from exc
    config = replace(config, netbios_name=samba.netbios_name)
    policy = policy_for(config, samba.auth.realm)
    service = AgentService(config, policy=policy, shares=samba.shares, exposer=samba.exposer)
    return service, samba.auth


def _served(service: AgentService) -> str:
    """How many shares the agent serves: Samba's behind Samba, else its own."""
    try:
        count = len(list(service.shares))  # type: ignore[call-overload]
    except TypeError:  # a share table that cannot list (lookup only)
        return f"{len(service.config.shares)} share(s)"
    from_samba = service.config.samba.config_file and service.config.samba.shares == "samba"
    return f"{count} share(s)" + (" from Samba" if from_samba else "")


def _say(config: AgentConfig, text: str) -> None:
    """A start-up line, shown at every log level (the admin's proof the agent came
    up), in the log's format: with ``json`` every line of the log is a JSON object."""
    if config.log.format == "json":
        from remotevss.agent.events import JsonFormatter

        record = logging.LogRecord(log.name, logging.INFO, __file__, 0, "%s", (text,), None)
        line = JsonFormatter().format(record)
    else:
        line = f"remotevss agent: {text}"
    print(line, file=sys.stderr, flush=True)


def _as_built(reload: Callable[[], AgentConfig], built: AgentConfig) -> Callable[[], AgentConfig]:
    """The reloaded file's config as build_service derives it behind Samba: the
    netbios name is smb.conf's, so an unchanged file compares equal."""
    return lambda: replace(reload(), netbios_name=built.netbios_name)


async def _trim_helpers(auth: RpcAuthenticator, every: float = 5.0) -> None:
    """Idle ntlm_auth helpers go after [rpc_auth] helper_idle: memory is for bursts."""
    while True:
        await asyncio.sleep(every)
        if auth.pool.trim_due() and (ended := await asyncio.to_thread(auth.pool.trim)):
            log.debug("ended %d idle ntlm_auth helper(s)", ended)


async def run_agent(
    config: AgentConfig,
    reload: Callable[[], AgentConfig] | None = None,
    verbose: int = 0,
) -> int:
    try:
        service, names = build_service(config)
    except ConfigError as exc:  # as the command line reports every other one: one line
        print(f"remotevss: configuration error: {exc}", file=sys.stderr)
        return 2
    if reload is not None and config.samba.config_file:
        reload = _as_built(reload, service.config)
    ops = Operations(service, reload=reload, verbose=verbose)  # docs/operations.md
    ops.samba_realm = names.realm
    # SIGTERM/SIGINT are caught from here on: one that arrives while the agent
    # reconciles, binds its sockets or runs its first GC pass (a supervisor may
    # see the admin socket answer before that pass ends) lets start-up finish
    # and then stops as gracefully as later, sockets removed, exit 0.
    # SIGHUP too (its default action would kill the agent): one during start-up
    # is kept and the reload runs once the agent serves.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    early_hup: list[bool] = []
    loop.add_signal_handler(signal.SIGHUP, early_hup.append, True)
    report = await service.start()
    for line in report.lines():
        _say(config, f"start-up: {line}")
    server = await serve_unix(service, config.socket_path, config.socket_group)
    bound = socket_identity(config.socket_path)
    pipe: PipeListener | None = None
    auth: RpcAuthenticator | None = None
    if config.samba.config_file:
        pipe_dir = config.samba.pipe_dir or default_pipe_dir(config.samba.config_file)
        auth = RpcAuthenticator(config, names)
        ops.rpc_auth = auth  # a reload resizes its pool
        pipe = PipeListener(service, Path(pipe_dir), security=auth.security, gate=auth.gate)
        await pipe.start()
        if risk := takeover_risk(config.samba.config_file):
            log.warning("%s; see docs/samba.md (recipe B or C)", risk)
    await ops.start(pipe)
    loop.add_signal_handler(signal.SIGHUP, ops.reload)
    if early_hup:
        ops.reload()
    _say(config, f"serving FSRVP on {config.socket_path}"
         + (f" and {pipe.path}" if pipe else "")
         + f" ({_served(service)}, mode {config.mode.value})")
    trimmer = asyncio.create_task(_trim_helpers(auth)) if auth is not None else None
    await stop.wait()
    log.info("stopping")
    if trimmer is not None:
        trimmer.cancel()
    if pipe is not None:
        await pipe.close()
    if auth is not None:
        auth.close()
    server.close()
    await server.wait_closed()
    unlink_if_ours(config.socket_path, bound)
    await ops.stop()
    await service.close()
    return 0
