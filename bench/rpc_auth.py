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

``--kerberos``: both Samba instances also take Kerberos (a private MIT KDC,
``kerberos method = dedicated keytab``) and the levels are none and privacy
bound with Kerberos (auth type 16, header signing, as rpcclient binds; Samba
4.17's rpcd_fsrvp runs this client's integrity calls but cannot sign the
answers, fault 0x1, so integrity is left out): the client is MIT's GSSAPI initiator
(tests/support/krb5_rpc_client.py) writing the PDUs into the pipe that impacket
opened on the SMB session, and "none" is the same raw-PDU client unbound, so
the difference is the authentication alone.

Usage (root): .venv/bin/python bench/rpc_auth.py [--runs 200] [--kerberos]
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


class PipeLink:
    """The in-process test client's ``conn`` (receive_data/pdus_to_send) over a real pipe."""

    def __init__(self, transport: Any) -> None:
        self.t = transport
        self._out: list[bytes] = []

    def receive_data(self, data: bytes) -> list[Any]:
        self.t.send(data)
        if data[2] != 16:  # every PDU but auth3 gets an answer
            while True:
                frag = bytes(self.t.recv())
                self._out.append(frag)
                if frag[3] & 0x02:  # PFC_LAST_FRAG
                    break
        return []

    def pdus_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out


class KrbPipe:
    """A Kerberos-bound FSRVP pipe with the dce.call/recv shape ``call`` uses."""

    def __init__(self, smb: Any, port: int, level: int, ccache: Path) -> None:
        from impacket.dcerpc.v5 import transport

        from remotevss.dcerpc.connection import Interface
        from tests.support.krb5_rpc_client import Krb5RpcClient

        self.t = transport.SMBTransport("localhost", port, filename=r"\FssagentRpc",
                                        smb_connection=smb)  # fmt: skip
        self.t.connect()
        iface = Interface(INTERFACE_UUID, (1, 0))
        self.c = Krb5RpcClient(PipeLink(self.t), iface, ccache,  # type: ignore[arg-type]
                               "host/localhost@REMOTEVSS.TEST", level=level)  # fmt: skip
        self.c.bind()
        self._last = b""

    def call(self, opnum: int, stub: bytes) -> None:
        self._last = self.c.call(opnum, stub)

    def recv(self) -> bytes:
        return self._last

    def disconnect(self) -> None:
        self.t.disconnect()


class PlainPipe(KrbPipe):
    """The same raw-PDU client bound without authentication: the fair "none" for KrbPipe."""

    def __init__(self, smb: Any, port: int) -> None:
        from impacket.dcerpc.v5 import transport

        from remotevss.dcerpc import pdu

        self.pdu = pdu
        self.t = transport.SMBTransport("localhost", port, filename=r"\FssagentRpc",
                                        smb_connection=smb)  # fmt: skip
        self.t.connect()
        self.link = PipeLink(self.t)
        syntax = pdu.SyntaxId(INTERFACE_UUID, 1, 0)
        self.link.receive_data(pdu.encode_bind(1, [pdu.ContextElem(0, syntax, (pdu.NDR20,))]))
        (ack,) = self.link.pdus_to_send()
        assert pdu.parse(ack)[0].ptype == pdu.PTYPE_BIND_ACK
        self.call_id = 2
        self._last = b""

    def call(self, opnum: int, stub: bytes) -> None:
        self.link.receive_data(self.pdu.encode_request(self.call_id, 0, opnum, stub))
        self.call_id += 1
        parts = []
        for frag in self.link.pdus_to_send():
            hdr, body = self.pdu.parse(frag)
            assert hdr.ptype == self.pdu.PTYPE_RESPONSE, body
            parts.append(body.stub)
        self._last = b"".join(parts)


def open_pipe(smb: Any, port: int, level: int, ccache: Path | None = None) -> Any:
    if ccache is not None:
        return KrbPipe(smb, port, level, ccache) if level > 1 else PlainPipe(smb, port)
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


def measure(
    port: int, share: str, runs: int, ccache: Path | None = None
) -> dict[str, dict[str, float]]:
    levels = {k: v for k, v in LEVELS.items() if ccache is None or k != "integrity"}
    from impacket.smbconnection import SMBConnection

    smb = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=60)
    smb.login("root", PASSWORD)
    out: dict[str, dict[str, float]] = {}
    unc = f"\\\\127.0.0.1\\{share}"
    for name, level in levels.items():
        binds, rtts = [], []
        for _ in range(max(runs // 10, 5)):
            t0 = time.perf_counter()
            dce = open_pipe(smb, port, level, ccache)
            assert call(dce, calls.GetSupportedVersionRequest()).return_value == 0
            dce.disconnect()
            binds.append(time.perf_counter() - t0)
        dce = open_pipe(smb, port, level, ccache)
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
    ap.add_argument("--kerberos", action="store_true", help="bind with Kerberos, not NTLM")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rvbench-auth-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        share = {"data": work / "data"}
        opts = {"data": {"vfs objects": ""}}
        krb: dict[str, Any] = {}
        kdc = None
        ccache = None
        if args.kerberos:
            import os

            from tests.support.kdc import PrivateKdc

            kdc = PrivateKdc(work / "kdc")
            kdc.start()
            os.environ.update(kdc.env)
            kdc.add_user("root", PASSWORD)
            keytab = work / "kdc" / "fs.keytab"
            for service in ("host/localhost", "cifs/localhost"):
                kdc.add_service(service, keytab)
            ccache = work / "kdc" / "cc"
            kdc.kinit("root", PASSWORD, ccache)
            krb = {"env": kdc.env, "extra_global": {
                "realm": "REMOTEVSS.TEST", "kerberos method": "dedicated keytab",
                "dedicated keytab file": f"FILE:{keytab}"}}  # fmt: skip
        anchor = PrivateSamba(
            work / "anchor", share, samba_fsrvp=True, share_options=opts, **krb
        )
        ours_samba = PrivateSamba(
            work / "ours", share, samba_fsrvp=False, share_options=opts, winbind=True,
            netbios_name="OURSFS", **krb,
        )  # fmt: skip
        agent = PrivateAgent(
            work / "agent", ours_samba, min_level="none", verbose=0,
            rpc_auth={"kerberos": "on"} if args.kerberos else {},
        )  # fmt: skip
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
                results["samba"].append(measure(anchor.port, "data", args.runs, ccache))
                results["ours"].append(measure(ours_samba.port, "data", args.runs, ccache))
        finally:
            agent.stop()
            ours_samba.stop()
            anchor.stop()
            if kdc is not None:
                kdc.stop()
    summary: dict[str, Any] = {}
    for server, rounds in results.items():
        summary[server] = {
            level: {
                key: round(statistics.median(r[level][key] for r in rounds), 3)
                for key in ("bind_ms", "call_ms")
            }
            for level in rounds[0]
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
        for level in summary["ours"] if level in results["ours"][0]
    }
    summary["mechanism"] = "kerberos" if args.kerberos else "ntlm"
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
