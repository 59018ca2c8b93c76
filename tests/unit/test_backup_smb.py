r"""The SMB side of the backup requestor without a server: directory-entry parsing,
the read pipeline of ``SmbFile`` (against a fake session that answers like an SMB
server), source specs, and the release of shadow copy sets -- leftovers of dead
runs, and the set of a run whose copy fails (the fake FSRVP server of
``tests.unit.fsrvp_fake``)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from smbprotocol.header import NtStatus
from smbprotocol.ioctl import SMB2IOCTLRequest
from smbprotocol.open import (
    SMB2CloseRequest,
    SMB2CreateRequest,
    SMB2QueryDirectoryRequest,
    SMB2QueryInfoRequest,
    SMB2ReadRequest,
)

from remotevss.backup import smb
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.requestor import (
    RunSettings,
    ShareRun,
    ShareSpec,
    _try_lock,
    backup_shares,
    release_leftovers,
    split_specs,
)
from remotevss.backup.smb import SmbError, SmbFile, SmbSource, filetime_ns
from remotevss.backup.snapshot_source import FILE, SourceEntry
from remotevss.client.connection import ConnectOptions, Credentials
from remotevss.client.errors import UsageError
from remotevss.client.shadow import CreateRequest, create_shadow_copies
from remotevss.client.state import ClientState
from remotevss.client.unc import parse_unc
from remotevss.fsrvp.machine import Mode
from tests.unit.fsrvp_fake import FakeNetwork, FakeServer

EPOCH = 116_444_736_000_000_000


# ----------------------------------------------------------------------------- parsing
def _id_full(name: str, *, attrs: int = 0x80, size: int = 0, file_id: int = 7,
             mtime: int = EPOCH + 15, pad: int = 0) -> bytes:
    raw = name.encode("utf-16-le")
    body = smb._ID_FULL.pack(0, 0, EPOCH + 1, EPOCH + 2, mtime, EPOCH + 4, size,
                             (size + 4095) // 4096 * 4096, attrs, len(raw), 0, 0, file_id)
    return body + raw + b"\0" * pad


def _chain(*entries: bytes) -> bytes:
    out = b""
    for i, e in enumerate(entries):
        if i < len(entries) - 1:
            e = e + b"\0" * (-len(e) % 8)
            e = struct.pack("<I", len(e)) + e[4:]
        out += e
    return out


def test_directory_entries_parse_with_full_time_resolution() -> None:
    buf = _chain(_id_full("."), _id_full("café.txt", size=5, file_id=-(2**63) + 5),
                 _id_full("sub", attrs=0x10, file_id=9))
    rows = smb.parse_id_full_directory(buf)
    assert [r[0] for r in rows] == [".", "café.txt", "sub"]
    e = smb._entry(*rows[1])
    assert (e.type, e.size, e.ino, e.mtime_ns, e.btime_ns) == (FILE, 5, -(2**63) + 5, 1500, 100)
    assert (e.mode, e.uid, e.gid, e.attributes) == (0o644, -1, -1, 0x80)
    d = smb._entry(*rows[2])
    assert (d.type, d.mode, d.size) == ("d", 0o755, 0)
    assert smb.synthetic_mode(0x1) == 0o444
    assert filetime_ns(0) == 0 and filetime_ns(EPOCH) == 0 and filetime_ns(EPOCH + 1) == 100


def test_raw_requests_are_byte_identical_to_smbprotocols() -> None:
    """The struct-packed requests match what smbprotocol's Structures produce."""
    def create(path: str, access: int, options: int) -> bytes:
        r = SMB2CreateRequest()
        r["requested_oplock_level"] = 0
        r["impersonation_level"] = 2
        r["desired_access"] = access
        r["file_attributes"] = 0
        r["share_access"] = 7
        r["create_disposition"] = 1
        r["create_options"] = options | 0x4000
        r["buffer_path"] = path.encode("utf-16-le") if path else b"\0\0"
        return bytes(r.pack())

    fid = bytes(range(16))
    for path in ("", "a\\b", "café"):
        assert smb._create(path, 0x120089, 0x44).pack() == create(path, 0x120089, 0x44)
    r = SMB2ReadRequest()
    r["length"], r["offset"], r["file_id"], r["padding"] = 100, 4096, fid, b"\x50"
    assert smb._read(fid, 4096, 100).pack() == r.pack()
    assert smb._read(fid, 4096, 100)["length"].get_value() == 100
    q = SMB2QueryDirectoryRequest()
    q["file_information_class"], q["flags"], q["file_index"] = 38, 1, 0
    q["file_id"], q["output_buffer_length"] = fid, smb.LIST_BUFFER
    q["buffer"] = "*".encode("utf-16-le")
    assert smb._query_dir(fid, True).pack() == q.pack()
    i = SMB2QueryInfoRequest()
    i["info_type"], i["file_info_class"], i["output_buffer_length"] = 3, 0, smb.SD_BUFFER
    i["additional_information"], i["file_id"] = 7, fid
    assert smb._query_sd(fid).pack() == i.pack()
    c = SMB2CloseRequest()
    c["file_id"] = fid
    assert smb._close(fid).pack() == c.pack()


def test_source_specs() -> None:
    local, shares = split_specs(["/srv/a", "x=/srv/b", r"\\fs1\Data", "h=//fs1/home"])
    assert local == ["/srv/a", "x=/srv/b"]
    assert [(s.label, s.unc.display) for s in shares] == [
        ("Data", r"\\fs1\Data"), ("h", r"\\fs1\home")]
    with pytest.raises(UsageError, match="same label"):
        split_specs([r"\\fs1\data", r"\\fs2\data"])
    assert [s.label for s in split_specs([r"\\fs1\data", r"b=\\fs2\data"])[1]] == ["data", "b"]


# ----------------------------------------------------------------------------- SmbFile
class FakeSession:
    """Answers Create/Read/QueryInfo/IOCTL/Close like a server holding one file."""

    def __init__(self, content: bytes, *, read_size: int = 256 << 10, attrs: int = 0x80,
                 alloc: int | None = None, ranges: list[tuple[int, int]] | None = None) -> None:
        self.content = content
        self.read_size = read_size
        self.attrs = attrs
        self.alloc = len(content) if alloc is None else alloc
        self.ranges = ranges
        self.broken: str | None = None
        self.host = "fake"
        self.answers: dict[int, Any] = {}
        self.sent: list[str] = []
        self.next = 0
        self.opened = 0

    def credits(self) -> int:
        return 1000

    def send(self, tree: Any, msgs: Sequence[Any], related: bool = False) -> list[int]:
        out = []
        for m in msgs:
            self.next += 1
            self.answers[self.next] = self._answer(m)
            self.sent.append({5: "Create", 6: "Close", 8: "Read", 0x10: "QueryInfo",
                              0x0E: "QueryDirectory", 0x0B: "IOCTL"}[m.COMMAND])
            out.append(self.next)
        return out

    def _answer(self, m: Any) -> Any:
        if m.COMMAND == 0x05:  # create
            self.opened += 1
            size = len(self.content)
            return smb._CREATE.pack(89, 0, 0, 1, EPOCH, EPOCH, EPOCH, EPOCH, self.alloc, size,
                                    self.attrs, 0, b"F" * 16, 0, 0)
        if m.COMMAND == 0x08:  # read
            n, off = struct.unpack_from("<IQ", m.pack(), 4)
            if off >= len(self.content):
                return smb._Status(NtStatus.STATUS_END_OF_FILE)
            data = self.content[off:off + n]
            return smb._READ.pack(17, 80, 0, len(data), 0) + b"\0" * 4 + data
        if m.COMMAND == 0x10:  # query info
            return smb._OUT.pack(9, 72, 4) + b"SD!!"
        if isinstance(m, SMB2IOCTLRequest):  # still smbprotocol's (rare: sparse files)
            if self.ranges is None:
                return smb._Status(NtStatus.STATUS_INVALID_DEVICE_REQUEST)
            out = b"".join(smb._RANGE.pack(o, n) for o, n in self.ranges)
            return smb._IOCTL.pack(49, 0, 0, b"F" * 16, 112, 0, 112, len(out), 0, 0) + out
        if m.COMMAND == 0x06:  # close
            self.opened -= 1
            return b""
        raise AssertionError(m)

    def recv(self, req: int) -> bytes:
        ans = self.answers.pop(req)
        if isinstance(ans, smb._Status):
            raise ans
        return ans  # type: ignore[no-any-return]

    def recv_all(self, reqs: Sequence[int]) -> list[Any]:
        return [self.answers.pop(r) for r in reqs]


def _source(session: FakeSession, security: bool = True) -> SmbSource:
    src = SmbSource.__new__(SmbSource)
    src.session = session  # type: ignore[assignment]
    src.share, src.label, src.cache_key, src.security = "s@{x}", "s", "s\0smb", security
    src.tree, src.unc = None, r"\\fake\s@{x}"
    src._plans, src._inflight = {}, {}
    return src


def _entry(size: int) -> SourceEntry:
    return SourceEntry("f", FILE, 0o644, -1, -1, size, 0, 0, 0, 1, 0, 1)


def test_small_file_is_one_compound() -> None:
    content = bytes(range(256)) * 100
    s = FakeSession(content)
    f = SmbFile(_source(s), "dir/f", _entry(len(content)))
    assert s.sent == ["Create", "Read", "QueryInfo", "Close"] and s.opened == 0
    assert f.size == len(content) and f.extents() == [(0, len(content))]
    assert f.pread(100, 50) == content[100:150] and f.xattrs() == {smb.SD_XATTR: b"SD!!"}
    empty = SmbFile(_source(FakeSession(b""), security=False), "e", _entry(0))
    assert empty.size == 0 and empty.extents() == [] and empty.xattrs() is None


def test_small_file_that_grew_is_read_the_long_way() -> None:
    content = b"x" * 5000
    s = FakeSession(content)
    f = SmbFile(_source(s), "f", _entry(100))  # listed at 100 bytes
    assert f.size == 5000 and f.pread(0, 5000) == content
    f.close()
    assert s.opened == 0 and not s.answers


def test_large_file_pipeline_pread_readinto_and_eof() -> None:
    content = bytes((i * 7) % 251 for i in range(3 << 20)) + b"tail"
    s = FakeSession(content, read_size=256 << 10)
    f = SmbFile(_source(s), "big", _entry(len(content)))
    assert s.sent == ["Create", "QueryInfo"] and f.size == len(content)
    assert f.extents() == [(0, len(content))]
    # a pread across request boundaries, then sequential readinto
    assert f.pread(100_000, 600_000) == content[100_000:700_000]
    pos, out = 700_000, bytearray()
    buf = memoryview(bytearray(300_000))
    while True:
        n = f.readinto(pos, buf)
        if n == 0:
            break
        out += buf[:n]
        pos += n
    assert bytes(out) == content[700_000:]
    assert max(len(s.answers), 0) <= smb.READ_DEPTH + 1  # never more than the depth in flight
    # random access backwards restarts the pipeline
    assert f.pread(10, 20) == content[10:30]
    f.close()
    assert s.opened == 0 and not s.answers, "every request was answered and received"


def test_allocated_ranges_are_asked_for_sparse_files() -> None:
    size = 8 << 20
    content = bytearray(size)
    content[1 << 20:(1 << 20) + 10] = b"0123456789"
    s = FakeSession(bytes(content), alloc=64 << 10, attrs=0x200,
                    ranges=[(1 << 20, 64 << 10), (size - 4096, 8192)])
    f = SmbFile(_source(s), "sparse", _entry(size))
    assert f.extents() == [(1 << 20, 64 << 10), (size - 4096, 4096)]
    buf = memoryview(bytearray(1 << 20))
    assert f.readinto(1 << 20, buf) == 64 << 10  # read-ahead stops at the extent's end
    assert bytes(buf[:10]) == b"0123456789"
    f.close()
    # a server that cannot answer: the whole file is data
    s2 = FakeSession(bytes(content), alloc=64 << 10)
    f2 = SmbFile(_source(s2), "sparse", _entry(size))
    assert f2.extents() == [(0, size)]
    f2.close()


def test_prefetched_small_files_are_used_and_leftovers_received() -> None:
    s = FakeSession(b"abc" * 10)
    src = _source(s)
    entries = [SourceEntry(f"f{i}", FILE, 0o644, -1, -1, 30, 0, 0, 0, i, 0, 1)
               for i in range(12)]
    src.will_read("d", entries)
    assert len(src._inflight) == smb.PREFETCH
    sent_before = len(s.sent)
    f = src.open("d/f0", entries[0])
    assert f.pread(0, 3) == b"abc"
    assert len(s.sent) == sent_before + 4  # f0 was prefetched; f8 is sent now
    src.close()
    assert not s.answers and s.opened == 0


# ----------------------------------------------------------------------------- release
def _fake(mode: Mode = Mode.SAMBA) -> tuple[FakeNetwork, FakeServer]:
    net = FakeNetwork()
    srv = net.add(FakeServer({"127.0.0.1"}, {"data": "/vol1", "home": "/vol2"}, mode))
    return net, srv


def test_leftover_sets_of_dead_runs_are_released(tmp_path: Path) -> None:
    net, srv = _fake()
    state_path = tmp_path / "backup-sets.sqlite3"
    state = ClientState(state_path)
    create_shadow_copies(CreateRequest([r"\\127.0.0.1\data"]), Credentials("u", "p"),
                         state=state, connector=net.connector())
    assert not srv.clean and len(state.sets()) == 1
    # a run that is alive holds its lock: its set is left alone
    (live,) = state.sets()
    runs = tmp_path / "backup-runs"
    runs.mkdir()
    fd = _try_lock(runs / f"{live.client_set_id}.lock", create=True)
    assert fd is not None and fd >= 0
    assert release_leftovers(state, state_path, Credentials("u", "p"), ConnectOptions(),
                             net.connector()) == []
    os.close(fd)  # the run died
    out = release_leftovers(state, state_path, Credentials("u", "p"), ConnectOptions(),
                            net.connector())
    assert [(o.released, o.set_id) for o in out] == [(True, str(live.set_id))]
    assert srv.clean and state.sets() == [] and not list(runs.iterdir())


def test_failed_copy_still_releases_the_set(tmp_path: Path) -> None:
    net, srv = _fake()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens: the SMB data connection fails
    repo = tmp_path / "repo"
    init_repo(repo)
    settings = RunSettings(Credentials("u", "p"), ConnectOptions(port=port, connect_timeout=2),
                           state_path=tmp_path / "st" / "backup-sets.sqlite3",
                           connector=net.connector())
    outcome = ShareRun()

    with Repository(repo, "write") as r, pytest.raises(SmbError, match="cannot connect"):
        backup_shares(r, [ShareSpec("data", parse_unc(r"\\127.0.0.1\data")),
                          ShareSpec("home", parse_unc(r"\\127.0.0.1\home"))],
                      settings, run=outcome)
    assert [o.released for o in outcome.released] == [True]
    assert srv.clean, "the shadow copies were deleted on the server"
    assert ClientState(settings.state_path).sets() == []
    assert not list((tmp_path / "st" / "backup-runs").iterdir())
    with Repository(repo, "read") as r:
        assert r.points() == []


class _Stop(BaseException):
    pass


def test_sigterm_is_held_back_while_a_set_is_released() -> None:
    import signal

    from remotevss.backup.requestor import _hold_sigterm, terminate_as

    before = signal.getsignal(signal.SIGTERM)
    with terminate_as(_Stop):
        release = _hold_sigterm()
        signal.raise_signal(signal.SIGTERM)  # arrives during the release: deferred
        with pytest.raises(_Stop):
            release()
        with pytest.raises(_Stop):
            signal.raise_signal(signal.SIGHUP)
    assert signal.getsignal(signal.SIGTERM) == before
