"""The README demo: a full FSRVP shadow-copy sequence against a real agent.

It makes a loop-mounted btrfs, starts ``remotevss agent`` as its own
process on a private unix socket, drives the spec's client sequence with an
independent DCE/RPC client (impacket's), shows that the exposed snapshot
holds the point-in-time content while the live share has moved on, deletes
the shadow copy and cleans everything up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from remotevss.client.local import LocalClient
from remotevss.fsrvp.constants import CTX_BACKUP, HResult, hresult_name
from remotevss.loopfs import loop_filesystem


def _check(step: str, resp: Any) -> Any:
    rv = getattr(resp, "return_value", 0)
    print(f"  {step:<32} -> {hresult_name(rv)}")
    if rv != HResult.ZERO:
        raise SystemExit(f"demo failed at {step}: {hresult_name(rv)}")
    return resp


def _filetime_to_text(ft: int) -> str:
    return datetime.fromtimestamp(ft / 10_000_000 - 11644473600, UTC).isoformat(timespec="seconds")


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_socket():
        if proc.poll() is not None:
            raise SystemExit(f"agent exited early with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("agent did not start in time")
        time.sleep(0.05)


def run_demo() -> int:
    if os.geteuid() != 0:
        print("remotevss demo needs root (it mounts a loop btrfs)", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="remotevss-demo-") as tmp,
        loop_filesystem("btrfs", 256, tmp) as mnt,
    ):
        import btrfsutil

        share = mnt / "data"
        btrfsutil.create_subvolume(str(share))
        (share / "report.txt").write_text("quarterly figures: version 1\n")
        sock = Path(tmp) / "agent.sock"
        argv = [
            sys.executable,
            "-m",
            "remotevss.cli",
            "agent",
            "--socket",
            str(sock),
            "--state-dir",
            f"{tmp}/state",
            "--expose-dir",
            f"{tmp}/exposed",
            "--share",
            f"data={share}",
            "-v",
        ]
        print(f"* btrfs on a loop device at {mnt}; share 'data' = subvolume {share}")
        print("* starting: " + " ".join(argv[2:]))
        agent = subprocess.Popen(argv)
        try:
            wait_for_socket(sock, agent)
            unc = r"\\localhost\data" + "\\"
            print("* FSRVP sequence over the local socket (impacket's DCE/RPC client):")
            with LocalClient(str(sock)) as c:
                sup = _check("IsPathSupported", c.is_path_supported(unc))
                print(f"      owner machine: {sup.owner_machine_name}")
                ver = _check("GetSupportedVersion", c.get_supported_version())
                print(f"      versions: {ver.min_version}..{ver.max_version}")
                _check("SetContext(BACKUP)", c.set_context(CTX_BACKUP))
                set_id = _check("StartShadowCopySet", c.start(uuid.uuid4())).shadow_copy_set_id
                copy_id = _check("AddToShadowCopySet", c.add(set_id, unc)).shadow_copy_id
                _check("PrepareShadowCopySet", c.prepare(set_id))
                _check("CommitShadowCopySet", c.commit(set_id))
                (share / "report.txt").write_text(
                    "quarterly figures: version 2 (after the snapshot)\n"
                )
                _check("ExposeShadowCopySet", c.expose(set_id))
                mapping = _check(
                    "GetShareMapping", c.get_share_mapping(copy_id, set_id, unc)
                ).mapping
                _check("RecoveryCompleteShadowCopySet", c.recovery_complete(set_id))
                exposed = Path(tmp) / "exposed" / mapping.shadow_copy_share_name
                snap = exposed.resolve()
                print("* created:")
                print(f"      shadow copy set id  {set_id}")
                print(f"      shadow copy id      {copy_id}")
                print(f"      original share      {mapping.share_name_unc}")
                print(f"      snapshot share      {mapping.shadow_copy_share_name}")
                print(f"      snapshot path       {snap}")
                print(f"      creation time       {_filetime_to_text(mapping.creation_timestamp)}")
                print(f"      live file now       {(share / 'report.txt').read_text().strip()!r}")
                print(f"      file in snapshot    {(exposed / 'report.txt').read_text().strip()!r}")
                try:
                    (exposed / "report.txt").write_text("tamper")
                    print("      snapshot is WRITABLE (unexpected)")
                    return 1
                except OSError as exc:
                    print(f"      snapshot read-only  yes ({exc.strerror})")
                _check("DeleteShareMapping", c.delete_share_mapping(set_id, copy_id, unc))
            gone = not snap.exists() and not exposed.is_symlink()
            print(f"* after delete: snapshot removed={gone}")
            return 0 if gone else 1
        finally:
            agent.terminate()
            agent.wait(timeout=20)
            print("* agent stopped; unmounting and cleaning up")
