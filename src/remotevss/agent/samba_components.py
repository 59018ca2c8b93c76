"""Build the agent's share table and exposer from ``[samba]`` in its config.

Why one function: the agent's start-up (agent/main.py) should not know which
Samba pieces exist or that they share one :class:`SambaConf` (one snapshot
of smb.conf per process, made by a child: no python-samba in the agent, see
remotevss.samba.conf).
"""

from __future__ import annotations

from typing import NamedTuple

from remotevss.agent.config import AgentConfig
from remotevss.agent.rpc_security import SambaAuthNames
from remotevss.samba.conf import SambaConf, samba_bool, shared_conf
from remotevss.samba.registry_exposer import RegistryExposer
from remotevss.samba.shares import SambaShareTable
from remotevss.shares.exposer import Exposer, SymlinkExposer
from remotevss.shares.table import LocalShare, ShareLookup, ShareTable


class SambaComponents(NamedTuple):
    shares: ShareLookup
    exposer: Exposer
    netbios_name: str
    auth: SambaAuthNames  # winbind separator, realm, keytab: for RPC authentication


def make_samba_components(config: AgentConfig) -> SambaComponents:
    """Shares, exposer and the names Samba uses, for an agent behind Samba.

    ``[samba] shares = "samba"``: Samba's file and registry shares
    (:class:`SambaShareTable`); ``"agent"``: the agent's own ``[shares]``.
    ``[samba] expose = "registry"``: snapshot shares as Samba registry shares
    (:class:`RegistryExposer`); ``"symlink"``: symlinks in ``expose_dir``.
    ``netbios_name`` is Samba's (``netbios name``, default: the host name upper
    case): what IsPathSupported should answer as OwnerMachineName and
    GetShareMapping put in ShareNameUNC in ``samba`` mode.

    Raises ValueError when ``[samba] config_file`` is empty;
    remotevss.samba.conf.SambaConfigError when Samba's config cannot be read;
    remotevss.shares.exposer.ExposeError when registry exposure cannot work
    (``registry shares`` off, registry unreadable);
    remotevss.samba._lib.SambaUnavailable without python3-samba.
    """
    s = config.samba
    if not s.config_file:
        raise ValueError("[samba] config_file is empty: the agent is not behind Samba")
    conf = shared_conf(s.config_file)
    conf.registry_reader = conf.registry_names_reader = None  # an earlier exposer's
    shares: ShareLookup
    if s.shares == "samba":
        shares = SambaShareTable(conf, backend=config.backend)
    else:
        shares = ShareTable(LocalShare(x.name, x.path, x.backend) for x in config.shares)
    exposer: Exposer
    if s.expose == "registry":
        # registry shares read and written without python-samba, which leaks per call
        # (samba/regdb.py); the share table reads them the same way
        registry = RegistryExposer(conf)
        conf.registry_reader = registry.read_share
        conf.registry_names_reader = registry.share_names
        exposer = registry
    else:
        exposer = SymlinkExposer(config.expose_dir)
    return SambaComponents(shares, exposer, conf.netbios_name, auth_names(conf))


def served_shares(config: AgentConfig) -> ShareLookup:
    """The shares the agent serves with ``config``, without starting anything: for
    admin commands run while it is stopped.  Behind Samba with ``[samba] shares =
    "samba"`` Samba's file and registry shares (registry read directly, no exposer);
    otherwise ``[shares]``.  Raises SambaConfigError when smb.conf cannot be read."""
    if config.samba.config_file and config.samba.shares == "samba":
        return SambaShareTable(shared_conf(config.samba.config_file), backend=config.backend)
    return ShareTable(LocalShare(x.name, x.path, x.backend) for x in config.shares)


def auth_names(conf: SambaConf) -> SambaAuthNames:
    """How smbd names users and where its Kerberos keys are: ``kerberos method =
    dedicated keytab`` uses ``dedicated keytab file``; the keytab methods use the
    system keytab ("" here); ``secrets only`` has none the agent could read."""
    method = str(conf.get("kerberos method") or "").strip().lower()
    keytab = ""
    if method == "dedicated keytab":
        keytab = str(conf.get("dedicated keytab file") or "").removeprefix("FILE:")
    return SambaAuthNames(
        separator=str(conf.get("winbind separator") or "\\")[:1],
        realm=str(conf.get("realm") or "").upper(),
        keytab=keytab,
        netbios_name=conf.netbios_name,
        standalone=is_standalone(conf),
    )


def is_standalone(conf: SambaConf) -> bool:
    """A server of its own (smbd's ROLE_STANDALONE): ``server role = standalone``, or
    ``auto`` with ``security = user`` and no ``domain logons`` (a classic DC)."""
    role = str(conf.get("server role") or "auto").strip().lower()
    if role != "auto":
        return role.startswith("standalone")
    security = str(conf.get("security") or "user").strip().lower()
    return security in ("user", "auto") and not samba_bool(conf.get("domain logons"))
