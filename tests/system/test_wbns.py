"""The private-winbindd wrapper (remotevss.samba.wbns) must not pin the mounts
of the tests around it: its namespace starts as a copy of every mount, and a
copy keeps its filesystem busy (a zfs-fuse clone then cannot be destroyed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remotevss.snapshots import mounts

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount and unshare need root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing"),
]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    made: list[Path] = []

    def mount(name: str) -> Path:
        p = tmp_path / name
        p.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(p)], check=True)
        made.append(p)
        return p

    yield mount
    for p in reversed(made):
        mounts.unmount_all(str(p))


def child_mount_points(tmp_path: Path, socket_dir: Path, *args: str) -> set[str]:
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
         "remotevss.samba.wbns", str(socket_dir),
         "sh", "-c", "cat /proc/self/mountinfo", "sh", *args],
        capture_output=True, text=True, check=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    return {m.mount_point for m in mounts.parse_mountinfo(out.stdout)}


def test_the_wrapped_command_lets_go_of_temporary_mounts_it_does_not_need(
        tmp_path: Path, tmpfs: Callable[[str], Path]) -> None:
    pinned = tmpfs("pinned")          # e.g. another test's loop filesystem or ZFS clone
    keep = tmpfs("keep")              # holds the winbindd socket directory: needed
    conf_mount = tmpfs("conf")        # holds a file named on the command line: needed
    (keep / "sock").mkdir()
    (conf_mount / "smb.conf").write_text("[global]\n")
    seen = child_mount_points(tmp_path, keep / "sock", f"--configfile={conf_mount}/smb.conf")
    assert str(pinned) not in seen
    assert {str(keep), str(conf_mount), "/run/samba/winbindd"} <= seen
    # the parent's namespace is untouched
    assert mounts.mount_at(str(pinned)) is not None
