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


LIST_PROBE = (
    "import sys, uuid\n"
    "from remotevss.client.state import ClientState, CopyRecord, SetRecord, SetStatus\n"
    "path = sys.argv[1]\n"
    "sid = uuid.UUID(int=7)\n"
    "st = ClientState(path)\n"
    "st.put_set(SetRecord(sid, 'fs1', 445, 'fs1', sid, 0x10, False, SetStatus.EXPOSED, 0.0, 0.0))\n"
    "st.put_copy(CopyRecord(uuid.UUID(int=8), sid, 'fs1', '\\\\\\\\fs1\\\\data\\\\', 'data@x'))\n"
    "st.close()\n"
    "from remotevss.cli import main\n"
    "rc = main(['shadow', '--state', path, 'list', '--no-check'])\n"
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'impacket', 'Cryptodome', 'pyasn1'}))\n"
    "print('rc', rc)\n"
)


def test_listing_the_table_without_checking_loads_no_impacket(tmp_path) -> None:
    """``list --no-check`` only reads the client table: it names contexts and
    attributes from fsrvp/contexts.py, so no SMB stack is loaded."""
    done = subprocess.run(
        [sys.executable, "-c", LIST_PROBE, str(tmp_path / "state.sqlite3")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    out = done.stdout
    assert "Shadow copy set ID = {00000000-0000-0000-0000-000000000007}" in out
    assert "Context:          file-share-backup (0x00000010)" in out
    assert "Auto_Release" in out and "Read-only" in out
    assert out.strip().splitlines()[-2:] == ["[]", "rc 0"]
