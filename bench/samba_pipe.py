"""Benchmark: \\pipe\\FssagentRpc through smbd, our agent vs Samba's rpcd_fsrvp.

Two private Samba instances run side by side: one without rpcd_fsrvp, with
our agent (a real ``remotevss agent`` process) on its pipe socket; one with
Samba's own rpcd_fsrvp (the anchor).  Runs alternate between them.

* rpcclient: wall time of ``rpcclient -c fss_get_sup_version`` (process
  start, SMB negotiate + session set-up, pipe open with the NPA hand-off,
  bind, one call): the cost a Samba client tool pays per call;
* impacket: an open SMB session, then pipe open + bind + GetSupportedVersion
  + close, in-process (no process start: the pipe path itself).

Usage (root): .venv/bin/python bench/samba_pipe.py [--runs 30]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from impacket.dcerpc.v5 import transport  # noqa: E402
from impacket.smbconnection import SMBConnection  # noqa: E402
from impacket.uuid import uuidtup_to_bin  # noqa: E402

from remotevss.fsrvp import calls  # noqa: E402
from remotevss.fsrvp.constants import INTERFACE_UUID  # noqa: E402
from tests.interop.test_samba_pipe import SambaAgent  # noqa: E402
from tests.support.samba import PASSWORD, PrivateSamba  # noqa: E402


def rpcclient(samba: PrivateSamba) -> None:
    out = samba.rpcclient("fss_get_sup_version", check=False)
    if "versions from 1 to 1" not in out.stdout:
        raise RuntimeError(out.stdout + out.stderr)


def impacket_call(smb: SMBConnection, port: int) -> None:
    t = transport.SMBTransport("127.0.0.1", port, filename=r"\FssagentRpc", smb_connection=smb)
    dce = t.get_dce_rpc()
    dce.connect()
    dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))
    dce.call(0, calls.encode_request(calls.GetSupportedVersionRequest()))
    r = calls.decode_response(0, dce.recv())
    assert isinstance(r, calls.GetSupportedVersionResponse) and r.max_version == 1
    dce.disconnect()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rvss-bench-pipe-") as tmp:
        work = Path(tmp)
        share = work / "share"
        share.mkdir()
        ours = PrivateSamba(work / "ours", {"share": share}, samba_fsrvp=False)
        anchor = PrivateSamba(work / "anchor", {"share": share}, samba_fsrvp=True)
        (work / "agent").mkdir()
        agent = SambaAgent(work / "agent", {"share": share}, samba_conf=ours.conf)
        try:
            ours.start()
            anchor.start()
            agent.start()
            sessions = {}
            for name, s in (("ours", ours), ("anchor", anchor)):
                smb = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=s.port)
                smb.login("root", PASSWORD)
                sessions[name] = (s, smb)
            results: dict[str, dict[str, list[float]]] = {
                n: {"rpcclient": [], "impacket": []} for n in sessions
            }
            for i in range(args.runs + 3):  # 3 warm-up rounds
                for name, (s, smb) in sessions.items():
                    a = timed(functools.partial(rpcclient, s))
                    b = timed(functools.partial(impacket_call, smb, s.port))
                    if i >= 3:
                        results[name]["rpcclient"].append(a)
                        results[name]["impacket"].append(b)
        finally:
            agent.stop()
            anchor.stop()
            ours.stop()
    print(f"runs: {args.runs} (median / min, ms)")
    print(f"{'server':<28} {'rpcclient connect+call':>24} {'impacket open+bind+call':>25}")
    for name, label in (("ours", "remotevss agent (pipe)"), ("anchor", "Samba rpcd_fsrvp 4.17")):
        r = results[name]
        cells = [
            f"{statistics.median(r[k]):8.2f} / {min(r[k]):6.2f}" for k in ("rpcclient", "impacket")
        ]
        print(f"{label:<28} {cells[0]:>24} {cells[1]:>25}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
