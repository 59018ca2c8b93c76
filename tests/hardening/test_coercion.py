r"""Coercion: UNC hosts in every string field never make the agent reach out.

FSRVP carries client-chosen UNCs in AddToShadowCopySet (3), IsPathSupported (8),
IsPathShadowCopied (9), GetShareMapping (10) and DeleteShareMapping (11).  A
server that resolved or contacted the host part could be coerced into
authenticating to an attacker (the "ShadowCoerce" class of attacks on Windows'
FSRVP).  The agent must only ever use the share part.

How it is observed (three independent ways, each with a positive control):

1. **Decoy TCP listeners** on 127.0.0.1 and ::1, ports 445, 139, 80, 443, 4455
   and 53 (PrivateSamba listens on a high port, so 445/139 are free), and
   127.0.0.2:445: they count accepted connections from anyone (agent or smbd).
2. **Decoy DNS**: the agent runs in a private mount namespace (``unshare -m``)
   whose /etc/resolv.conf says ``nameserver 127.0.0.1``; a UDP listener on
   127.0.0.1:53 counts queries.  (The machine's real resolver is never used by
   the agent under test, so no lookup can leave the host.)
3. **strace** attached to the agent (``-f``, every thread) records every
   network syscall; none may use an AF_INET/AF_INET6 socket.

Each UNC form goes through a full sequence (Start, Add, Commit, Expose,
GetShareMapping, DeleteShareMapping) and the three query calls, over the local
socket and over SMB through smbd.
"""

from __future__ import annotations

import contextlib
import re
import select
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from remotevss.client.rpc import FsrvpCalls
from remotevss.fsrvp.constants import CTX_BACKUP
from tests.hardening.harness import ZERO, Stack

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("strace") is None or shutil.which("unshare") is None,
                       reason="needs strace and unshare"),
]  # fmt: skip

# Host forms: IPv4/IPv6 literals, names that need DNS, WebDAV-style ports and SSL,
# and the decoy ports themselves.  The share part is a real share (data0) so the
# whole sequence runs, or a missing one.
HOSTS = [
    "127.0.0.1@4455",
    "127.0.0.1@SSL@443",
    "decoy-webdav.invalid@SSL@443",
    "127.0.0.1@80",
    "localhost",
    "decoy.invalid",
    "decoy-coerce.example.invalid",
    "[::1]",
    "::1",
    "0--1.ipv6-literal.net",
    "127.0.0.2",
    "127.0.0.1:445",
    "wpad",
    "DECOY-NETBIOS",
]
EXTRA_UNCS = [
    r"\\?\UNC\127.0.0.1\data0",
    r"\\127.0.0.1@4455\DavWWWRoot\data0",
    r"\\127.0.0.1\pipe\spoolss",
    r"\\127.0.0.1\IPC$",
    "//127.0.0.1/data0",
    "http://127.0.0.1:4455/data0",
    r"\\127.0.0.1@4455\x",
    r"\\decoy.invalid\x\\",
    "\\\\" + "d" * 300 + ".invalid\\data0",
]


class Decoys:
    """TCP listeners that count connections; a UDP DNS listener that counts queries."""

    def __init__(self) -> None:
        self.tcp: list[socket.socket] = []
        self.hits: list[str] = []
        self.dns_queries: list[bytes] = []
        self._stop = threading.Event()
        for host, port in [(h, p) for h in ("127.0.0.1", "::1")
                           for p in (445, 139, 80, 443, 4455, 53)] + [("127.0.0.2", 445)]:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                s.close()
                raise RuntimeError(f"decoy {host}:{port} cannot listen: {exc}") from exc
            s.listen(16)
            s.setblocking(False)
            self.tcp.append(s)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 53))
        self.udp.setblocking(False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        socks = [*self.tcp, self.udp]
        while not self._stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.05)
            for s in ready:
                if s is self.udp:
                    data, _ = s.recvfrom(4096)
                    self.dns_queries.append(data)
                    continue
                with contextlib.suppress(BlockingIOError):
                    conn, peer = s.accept()
                    self.hits.append(f"{s.getsockname()[:2]} <- {peer[:2]}")
                    conn.close()

    def names_queried(self) -> list[str]:
        """QNAMEs of the DNS queries received."""
        out = []
        for q in self.dns_queries:
            labels, i = [], 12
            while i < len(q) and q[i]:
                labels.append(q[i + 1 : i + 1 + q[i]].decode("ascii", "replace"))
                i += 1 + q[i]
            out.append(".".join(labels))
        return out

    def settle(self) -> None:
        time.sleep(0.2)

    def reset(self) -> None:
        self.settle()
        self.hits.clear()
        self.dns_queries.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in [*self.tcp, self.udp]:
            s.close()


@pytest.fixture
def decoys() -> Iterator[Decoys]:
    d = Decoys()
    try:
        yield d
    finally:
        d.close()


@contextlib.contextmanager
def traced(pid: int, out: Path) -> Iterator[Path]:
    """strace every network syscall of ``pid`` (all threads) into ``out``."""
    p = subprocess.Popen(["strace", "-qq", "-f", "-p", str(pid), "-e", "trace=%network",
                          "-o", str(out)], stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(0.5)
    assert p.poll() is None, p.stderr.read() if p.stderr else ""
    try:
        yield out
    finally:
        p.terminate()
        p.wait(10)


INET = re.compile(r"AF_INET6?|sin6?_port")


def inet_calls(trace: Path) -> list[str]:
    return [line for line in trace.read_text().splitlines() if INET.search(line)]


def drive(c: FsrvpCalls, uncs: list[str]) -> dict[str, list[int]]:
    """Every string-carrying opnum with each UNC; a full sequence where the UNC names a
    real share.  Returns the codes per UNC."""
    codes: dict[str, list[int]] = {}
    for u in uncs:
        got = [c.is_path_supported(u).return_value, c.is_path_shadow_copied(u).return_value]
        got.append(c.get_share_mapping(uuid.uuid4(), uuid.uuid4(), u).return_value)
        got.append(c.delete_share_mapping(uuid.uuid4(), uuid.uuid4(), u).return_value)
        assert c.set_context(CTX_BACKUP).return_value == ZERO
        r = c.start(uuid.uuid4())
        assert r.return_value == ZERO, hex(r.return_value)
        sid = r.shadow_copy_set_id
        a = c.add(sid, u)
        got.append(a.return_value)
        if a.return_value == ZERO:
            assert c.commit(sid).return_value == ZERO
            assert c.expose(sid).return_value == ZERO
            m = c.get_share_mapping(a.shadow_copy_id, sid, u)
            got.append(m.return_value)
            assert c.recovery_complete(sid).return_value == ZERO  # clears the context
            got.append(c.delete_share_mapping(sid, a.shadow_copy_id, u).return_value)
        else:
            assert c.abort(sid).return_value == ZERO  # clears the context
        codes[u] = got
    return codes


def test_no_outbound_connection_or_lookup_for_any_unc_host(
    stack: Stack, decoys: Decoys, tmp_path: Path
) -> None:
    st = stack
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    setup = f"mount --bind {resolv} /etc/resolv.conf"

    # positive controls: each detector sees what it is meant to see
    for s in decoys.tcp[:1]:
        socket.create_connection(s.getsockname()[:2], timeout=2).close()
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f"{setup} && getent hosts control-lookup.invalid"],
                   capture_output=True, timeout=30, check=False)  # fmt: skip
    decoys.settle()
    assert len(decoys.hits) == 1, decoys.hits
    assert "control-lookup.invalid" in decoys.names_queried(), decoys.names_queried()
    decoys.reset()

    uncs = [f"\\\\{h}\\data0\\" for h in HOSTS] + [f"\\\\{h}\\data0" for h in HOSTS[:4]]
    uncs += EXTRA_UNCS
    st.agent.stop()
    st.agent.namespace_setup = setup
    try:
        st.agent.start()
        with traced(st.agent.pid, tmp_path / "agent.strace") as trace:
            # positive control for strace: the agent's own unix-socket traffic shows up
            with st.agent.client() as local:
                codes_local = drive(local, uncs)
            with st.client() as smb:
                codes_smb = drive(smb, uncs)
            decoys.settle()
        lines = trace.read_text().splitlines()
        assert any("AF_UNIX" in line or "sun_path" in line for line in lines), lines[:5]
        assert inet_calls(trace) == []
        assert decoys.hits == [], decoys.hits
        assert decoys.dns_queries == [], decoys.names_queried()
        # the share part alone decides: every host form naming data0 works end to end
        for h in HOSTS:
            u = f"\\\\{h}\\data0\\"
            assert codes_local[u][0] == ZERO and codes_local[u][4] == ZERO, (u, codes_local[u])
            assert codes_smb[u][0] == ZERO and codes_smb[u][4] == ZERO, (u, codes_smb[u])
        for u in EXTRA_UNCS:
            assert codes_local[u][0] != ZERO, (u, codes_local[u])
        st.check()
        assert st.registry_snapshot_shares() == set()
    finally:
        st.agent.stop()
        st.agent.namespace_setup = ""
        st.agent.start()
