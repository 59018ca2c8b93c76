"""dgm.send_all with real processes and real unix datagram sockets (no Samba needed).

A receiver process names itself (``/proc/self/comm``) like a Samba daemon and
binds ``<socket dir>/<its pid>`` as messaging_dgm does; send_all must skip the
kinds that serve no shares, skip stale sockets, and leave FORCE_TDIS out for
the smbd parent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from remotevss.samba import dgm

RECEIVER = r"""
import os, socket, sys
sock_dir = sys.argv[1]
def become(name):
    with open("/proc/self/comm", "w") as f:
        f.write(name)
    path = os.path.join(sock_dir, str(os.getpid()))
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    return s
s = become(sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "become":
        s.close()
        s = become(cmd[1])
        print("ready", flush=True)
    elif cmd[0] == "count":
        s.setblocking(False)
        n = 0
        try:
            while True:
                s.recv(2048)
                n += 1
        except BlockingIOError:
            pass
        print(n, flush=True)
"""


class Receiver:
    def __init__(self, sock_dir: Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER, str(sock_dir), name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self._expect("ready")

    def _expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == word or word == "", line
        return line

    def ask(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._expect("ready" if cmd.split()[0] == "become" else "")

    def received(self) -> int:
        time.sleep(0.05)
        return int(self.ask("count"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_send_all_skips_no_share_processes_and_rechecks_a_new_socket(tmp_path: Path) -> None:
    sock_dir = tmp_path / "msg.sock"
    sock_dir.mkdir()
    smbd = Receiver(sock_dir, "smbd")
    winbindd = Receiver(sock_dir, "winbindd")
    try:
        # a stale socket of a dead process is skipped, not an error
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stale.bind(str(sock_dir / "999999"))
        stale.close()
        messages = [(dgm.MSG_SMB_FORCE_TDIS, b"data@{x}\0"), (dgm.MSG_SMB_CONF_UPDATED, b"")]
        assert dgm.send_all(str(sock_dir), messages, shares_only=True) == 1
        assert (smbd.received(), winbindd.received()) == (2, 0)
        # a process is looked at on every send (a pid can come back as another kind)
        winbindd.ask("become smbd")
        assert dgm.send_all(str(sock_dir), messages, shares_only=True) == 2
        assert (smbd.received(), winbindd.received()) == (2, 2)
        # FORCE_TDIS is not sent to skip_tdis_to (the smbd parent forwards it itself)
        assert dgm.send_all(str(sock_dir), messages, skip_tdis_to=smbd.proc.pid) == 2
        assert (smbd.received(), winbindd.received()) == (1, 2)
        assert sorted(dgm.peers(str(sock_dir))) == sorted([smbd.proc.pid, winbindd.proc.pid, 999999])
        assert os.getpid() not in dgm.peers(str(sock_dir))
    finally:
        smbd.stop()
        winbindd.stop()
