"""Start-up cost of the command line: impacket is loaded only when a command connects."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import sys, remotevss.cli\n"
    "p = remotevss.cli.build_parser()\n"
    "p.parse_args(['shadow', 'list', '--no-check'])\n"
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'impacket', 'Cryptodome', 'pyasn1'}))\n"
)


def test_building_the_parser_loads_no_impacket() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_a_server_error_still_names_its_call() -> None:
    probe = (
        "import sys\n"
        "from remotevss.client.errors import fsrvp_error\n"
        "e = fsrvp_error(4, 0x80042301)\n"  # CommitShadowCopySet, FSRVP_E_BAD_STATE
        "print(e.call, e.name, 'impacket' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    # the codec (fsrvp/calls.py) needs no impacket: naming an error loads none
    assert done.stdout.split() == ["CommitShadowCopySet", "FSRVP_E_BAD_STATE", "False"]
