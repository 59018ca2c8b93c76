"""A test run to interrupt (tests/system/test_interrupt.py runs it as its own pytest).

It brings up everything a real interop test does — a loop btrfs, a private
smbd and samba-dcerpcd with winbindd, the agent and its Samba worker, one
exposed shadow copy — then announces itself in ``$VICTIM_READY`` and waits to
be interrupted.  Not collected in normal runs (its name is not ``test_*``).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from remotevss.client.local import LocalClient
from remotevss.fsrvp import calls
from tests.conftest import LoopFs
from tests.support.samba_agent import agent_behind_samba, subvolume_shares


@pytest.mark.root
def test_victim(loopfs: LoopFs, tmp_path: Path) -> None:
    shares = subvolume_shares(loopfs("btrfs"), ["data"])
    with agent_behind_samba(tmp_path, shares, winbind=True) as (_samba, agent):
        with LocalClient(str(agent.socket)) as c:  # one exposed copy: a registry share
            c.checked(calls.SetContextRequest(0))
            set_id = c.checked(calls.StartShadowCopySetRequest(uuid.uuid4())).shadow_copy_set_id
            unc = "\\\\localhost\\data"
            c.checked(calls.AddToShadowCopySetRequest(uuid.uuid4(), set_id, unc))
            c.checked(calls.PrepareShadowCopySetRequest(set_id, 60_000))
            c.checked(calls.CommitShadowCopySetRequest(set_id, 60_000))
            c.checked(calls.ExposeShadowCopySetRequest(set_id, 60_000))
        Path(os.environ["VICTIM_READY"]).write_text(f"{os.getpid()}\n")
        time.sleep(600)
