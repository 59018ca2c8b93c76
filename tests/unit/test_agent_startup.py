"""The agent's resident set: what `remotevss agent` imports (issue 13, memory).

Why a test: each of these packages was once in the agent and cost it resident
memory for nothing it does at idle (pyspnego + cryptography ~7.5 MB, the
client/backup/setup packages ~2 MB, prometheus-client ~3 MB without the
endpoint); an import added back anywhere on the agent's path fails here.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("spnego", "cryptography", "gssapi", "prometheus_client", "impacket", "samba")
PROBE = (
    "import sys, remotevss.cli as cli\n"
    "cli.build_parser(agent_only=cli._verb(['-v', 'agent', '--config', 'x']) == 'agent')\n"
    "import remotevss.agent.main, remotevss.agent.transports.samba_pipe\n"
    "import remotevss.agent.rpc_security, remotevss.agent.ntlm_auth\n"
    f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    "print(sorted(m for m in sys.modules if m.startswith(("
    "'remotevss.client', 'remotevss.backup', 'remotevss.setup'))))\n"
)


def test_the_agent_loads_no_client_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]


def test_the_whole_command_line_still_has_every_verb() -> None:
    import argparse

    from remotevss.cli import build_parser

    def verbs(p: argparse.ArgumentParser) -> set[str]:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return set(sub.choices)

    assert {"agent", "shadow", "backup", "status", "gc", "setup", "doctor", "demo"} <= verbs(
        build_parser()
    )
    assert verbs(build_parser(agent_only=True)) == {"agent"}


OPENSSL_PROBE = (
    "import sys, remotevss.cli as cli\n"
    "rc = cli.main(['agent', '--config', sys.argv[1]])\n"  # imports the agent, then fails
    "import remotevss.agent.rpc_security, remotevss.dcerpc.ntlm_seal\n"
    "print(rc, sorted(m for m in cli.OPENSSL_MODULES if m in sys.modules))\n"
    "print('libcrypto' in open('/proc/self/maps').read(), 'libssl' in open('/proc/self/maps').read())\n"
    "import ssl\n"  # importable again afterwards (prometheus-client needs it)
    "print(ssl.OPENSSL_VERSION_NUMBER > 0)\n"
)


def test_the_agent_process_maps_no_openssl(tmp_path) -> None:
    """asyncio's TLS and OpenSSL's digests stay out of the agent (~4.4 MB); NTLM's
    MD5 and HMAC-MD5 then run on the interpreter's built-in MD5, same bytes."""
    done = subprocess.run(
        [sys.executable, "-c", OPENSSL_PROBE, str(tmp_path / "missing.toml")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert done.stdout.split("\n")[:3] == ["2 []", "False False", "True"], done.stdout
    assert "configuration error" in done.stderr
