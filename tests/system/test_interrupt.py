"""An interrupted test run leaves nothing behind (tests/support/reaper.py).

A child pytest runs tests/support/interrupt_victim.py: a loop btrfs, a private
smbd + samba-dcerpcd + winbindd, the agent, its Samba worker and ntlm_auth
helpers, an exposed snapshot.  It is interrupted the two ways a person or CI
does it (SIGINT as Ctrl-C sends it, SIGTERM as a timeout sends it), and then
no process of that run, no mount and no loop device below its temporary root
may be left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from remotevss.samba.private import missing_tools
from tests.support import reaper

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    if missing := missing_tools("smbd", "winbindd", "ntlm_auth", "mkfs.btrfs"):
        pytest.skip(f"not installed: {', '.join(missing)}")
    ready = tmp_path / "ready"
    # Outside this run's root, and short: smbd's socket paths must fit in sun_path.
    child_tmp = Path(tempfile.mkdtemp(prefix="rvi-", dir="/tmp"))
    env = {**os.environ, "TMPDIR": str(child_tmp), "VICTIM_READY": str(ready)}
    env.pop(reaper.TOKEN_VAR, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/support/interrupt_victim.py"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the victim did not come up in 120 s"
            time.sleep(0.2)
        roots = [p for p in child_tmp.iterdir() if p.name.startswith("rv-")]
        assert len(roots) == 1, roots
        root = str(roots[0])
        token = (roots[0] / reaper.TOKEN_FILE).read_text()
        before = reaper.leftovers(token, root)
        names = " ".join(cmd for _, cmd in before.processes)
        for daemon in ("smbd", "samba-dcerpcd", "winbindd", "remotevss"):
            assert daemon in names, f"{daemon} not running before the interrupt: {names}"
        assert before.mounts and before.loops, before
        proc.send_signal(sig)
        out = proc.communicate(timeout=90)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, out  # interrupted, not passed
    left = reaper.leftovers(token, root)
    assert not left, f"{left.describe()}\n{out}"
    assert not Path(root).exists(), "the run's temporary root was not removed"
    child_tmp.rmdir()
