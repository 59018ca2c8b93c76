"""The README demo (``remotevss demo``) runs end to end and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remotevss.demo import TOOLS
from remotevss.samba.private import missing_tools

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(missing_tools(*TOOLS)), reason=f"missing tools: {missing_tools(*TOOLS)}"),
]


def test_demo() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "remotevss.cli", "demo"],
        capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0 and text.rstrip().endswith("demo OK"), text
    assert "'quarterly figures: version 1'\n      the snapshot share holds the point-in-time" in text
    assert "NT_STATUS_BAD_NETWORK_NAME" in text and "nothing left behind" in text
