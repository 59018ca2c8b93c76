"""Benchmark: what DCE/RPC authentication costs on \\pipe\\FssagentRpc, ours vs Samba's.

Two private Samba instances side by side (plain directories as shares; the
calls measured touch no snapshot), runs alternating:

* anchor: Samba 4.17's own rpcd_fsrvp (gensec in process);
* ours: smbd without rpcd_fsrvp, winbindd, and ``remotevss agent`` on its pipe
  with ``[rpc_auth] min_level = "none"`` so that every level can be measured
  (credentials checked by Samba's ntlm_auth through winbind).

Per server and level (none, integrity, privacy), on one open SMB3 session
(impacket): median of pipe open + bind (+ NTLM legs) + GetSupportedVersion +
close, and median round trip of IsPathSupported on a bound pipe.  The
privacy cost of a whole creation sequence is about 9 round trips x (privacy -
none) plus one bind's difference.

Usage (root): .venv/bin/python bench/rpc_auth.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remotevss.fsrvp import calls  # noqa: E402
from remotevss.fsrvp.constants import INTERFACE_UUID  # noqa: E402
from remotevss.samba.private import PASSWORD, PrivateAgent, PrivateSamba  # noqa: E402

LEVELS = {"none": 1, "integrity": 5, "privacy": 6}


def open_pipe(smb: Any, port: int, level: int) -> Any:
    from impacket.dcerpc.v5 import rpcrt, transport
    from impacket.uuid import uuidtup_to_bin

    t = transport.SMBTransport("127.0.0.1", port, filename=r"\FssagentRpc", smb_connection=smb)
    dce = t.get_dce_rpc()
    if level > 1:
        dce.set_credentials("root", PASSWORD, "")
        dce.set_auth_type(rpcrt.RPC_C_AUTHN_WINNT)
        dce.set_auth_level(level)
    dce.connect()
    dce.bind(uuidtup_to_bin((str(INTERFACE_UUID), "1.0")))
    return dce


def call(dce: Any, request: calls.Request) -> calls.Response:
    dce.call(request.opnum, calls.encode_request(request))
    return calls.decode_response(request.opnum, bytes(dce.recv()))


def measure(port: int, share: str, runs: int) -> dict[str, dict[str, float]]:
    from impacket.smbconnection import SMBConnection

    smb = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=60)
    smb.login("root", PASSWORD)
    out: dict[str, dict[str, float]] = {}
    unc = f"\\\\127.0.0.1\\{share}"
    for name, level in LEVELS.items():
        binds, rtts = [], []
        for _ in range(max(runs // 10, 5)):
            t0 = time.perf_counter()
            dce = open_pipe(smb, port, level)
            assert call(dce, calls.GetSupportedVersionRequest()).return_value == 0
            dce.disconnect()
            binds.append(time.perf_counter() - t0)
        dce = open_pipe(smb, port, level)
        for _ in range(runs):
            t0 = time.perf_counter()
            call(dce, calls.IsPathSupportedRequest(unc))  # the answer's code does not matter
            rtts.append(time.perf_counter() - t0)
        dce.disconnect()
        out[name] = {
            "bind_ms": statistics.median(binds) * 1e3,
            "call_ms": statistics.median(rtts) * 1e3,
        }
    smb.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rvbench-auth-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        share = {"data": work / "data"}
        opts = {"data": {"vfs objects": ""}}
        anchor = PrivateSamba(work / "anchor", share, samba_fsrvp=True, share_options=opts)
        ours_samba = PrivateSamba(
            work / "ours", share, samba_fsrvp=False, share_options=opts, winbind=True,
            netbios_name="OURSFS",
        )  # fmt: skip
        agent = PrivateAgent(work / "agent", ours_samba, min_level="none", verbose=0)
        results: dict[str, list[dict[str, dict[str, float]]]] = {"samba": [], "ours": []}
        try:
            anchor.start()
            ours_samba.start()
            agent.start()
            deadline = time.monotonic() + 20
            while not (anchor.pipe_dir / "fssagentrpc").exists():
                assert time.monotonic() < deadline, "rpcd_fsrvp did not come up"
                time.sleep(0.05)
            for _ in range(3):  # alternate, so drift hits both alike
                results["samba"].append(measure(anchor.port, "data", args.runs))
                results["ours"].append(measure(ours_samba.port, "data", args.runs))
        finally:
            agent.stop()
            ours_samba.stop()
            anchor.stop()
    summary: dict[str, Any] = {}
    for server, rounds in results.items():
        summary[server] = {
            level: {
                key: round(statistics.median(r[level][key] for r in rounds), 3)
                for key in ("bind_ms", "call_ms")
            }
            for level in LEVELS
        }
    for server in ("ours", "samba"):
        s = summary[server]
        s["privacy_cost_per_call_ms"] = round(s["privacy"]["call_ms"] - s["none"]["call_ms"], 3)
        s["privacy_cost_bind_ms"] = round(s["privacy"]["bind_ms"] - s["none"]["bind_ms"], 3)
        s["privacy_cost_sequence_ms"] = round(
            9 * s["privacy_cost_per_call_ms"] + s["privacy_cost_bind_ms"], 3
        )
    summary["ratio_ours_to_samba"] = {
        level: {
            key: round(summary["ours"][level][key] / summary["samba"][level][key], 2)
            for key in ("bind_ms", "call_ms")
        }
        for level in LEVELS
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
