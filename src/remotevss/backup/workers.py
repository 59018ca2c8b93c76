"""Worker processes that read, chunk, hash, compress and seal local files.

Why processes: on a tree of small files the engine's threads spend their time
waiting for the GIL (every pread, every zstd call hands it over and takes it
back); a worker process has its own.  The parent keeps everything that needs
the repository: the walk, the files cache, dedup against the index, the pack
writer and the commits, so the crash-safety rules are unchanged (a worker
never writes to the repository).

Rules:
- Workers are new interpreters (``python -m remotevss.backup.workers``), not
  forks: a fork made in the middle of a backup shares the parent's heap
  copy-on-write, and every page the parent then changes is duplicated (the
  workers keep the old copies: ~60 MB more on a 50,000-file tree); a new
  interpreter holds only what it imports (~20 MB), inherits no descriptor
  (no repository lock, no index connection) and no lock another thread held.
- The key material reaches a worker over its stdin pipe, never argv or the
  environment; a worker ignores SIGINT/SIGTERM/SIGHUP (the parent handles
  them) and is killed by the kernel when the parent dies (PR_SET_PDEATHSIG),
  so a SIGKILLed run leaves no worker behind.
- Tasks are batches of files (path, inode, ~1 MiB or 64 files); results come
  back per batch, large files in parts of at most ~4 MiB of sealed data, in
  file order.  A worker that dies (killed, out of memory) is an error for
  the whole run: nothing is committed.
- A worker compresses and seals every chunk (it cannot ask the index); the
  parent drops the ones the repository has.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remotevss.backup.chunker import ChunkerParams, compress, is_zero
from remotevss.backup.crypto import Codec, Keys, LegacyCodec
from remotevss.backup.memory import tune_malloc
from remotevss.backup.packs import DATA, blob_aad
from remotevss.backup.snapshot_source import LocalFile, RangeStream

WHOLE_READ = 8 << 20  # extents up to this size are read with one pread
PART_BYTES = 1 << 20  # a result message carries at most about this much sealed data
_LEN = struct.Struct("<Q")
_HEAD = struct.Struct("<QI")  # result messages: pickle length, out-of-band buffers
# Pipes this large hold a whole result message: the worker goes on with its next
# file instead of waking up once per 64 KiB (Linux's default) the parent has read.
PIPE_BYTES = 1 << 20
SEND_AHEAD = 4  # result messages a worker keeps while its pipe is full (~1 MiB each)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

# (token, path, inode)
Task = tuple[int, str, int]
# (offset, length, chunk id or None for zeros, compression, sealed bytes)
Segment = tuple[int, int, bytes | None, int, bytes | bytearray | None]
# (token, "part", [segments]) | (token, "done", (size, xattrs or None, changed while read))
# | (token, "error", message)
Result = tuple[int, str, Any]
# (last message of its batch, results)
Message = tuple[bool, list[Result]]
# The parent's own reading of one waiting file: (task, the largest size it may take
# now) -> taken
Inline = Callable[[Task, int], bool]
SMALL_FILE = 1 << 20  # the parent takes such a file first: it is back to results soon
PER_WORKER_BYTES = 16 << 20  # file bytes sent to a worker ahead (~0.1 s of its work)


class WorkerDied(Exception):
    """A worker process ended before its work was done: the run fails."""


def send_obj(fd: int, obj: object) -> None:
    data = pickle.dumps(obj, protocol=5)
    bufs = [memoryview(_LEN.pack(len(data))), memoryview(data)]
    while bufs:
        n = os.writev(fd, bufs)
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if bufs:
            bufs[0] = bufs[0][n:]


def _send_results(fd: int, msg: Message) -> None:
    """A result message with the sealed chunks out of band (pickle protocol 5): they
    go from their own buffers into the pipe, and the parent reads them straight
    into its receive buffer (no pickled copy here, no bytes object per chunk there)."""
    last, items = msg
    out = [(t, k, [(o, n, c, m, None if b is None else pickle.PickleBuffer(b))
                   for o, n, c, m, b in p]) if k == "part" else (t, k, p)
           for t, k, p in items]
    bufs: list[pickle.PickleBuffer] = []
    data = pickle.dumps((last, out), protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    head = _HEAD.pack(len(data), len(raws)) + struct.pack(f"<{len(raws)}Q",
                                                          *[len(r) for r in raws])
    views = [memoryview(head), memoryview(data), *raws]
    while views:
        n = os.writev(fd, views[:512])  # IOV_MAX is 1024
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


class ResultReader:
    """Reads one worker's result messages into a buffer that is used again and again:
    the sealed chunks of a message are memoryviews into it, valid until the next
    message is read (the parent writes them to its pack before that)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray(PIPE_BYTES)

    def read(self) -> Message | None:
        head = bytearray(_HEAD.size)
        if not _read_into(self.fd, head):
            return None
        size, count = _HEAD.unpack(head)
        lens = bytearray(8 * count)
        if count and not _read_into(self.fd, lens):
            return None
        sizes = struct.unpack(f"<{count}Q", lens)
        total = size + sum(sizes)
        if len(self.buf) < total:
            self.buf = bytearray(total)  # views of the old one may live on
        view = memoryview(self.buf)[:total]
        if not _read_into(self.fd, view):
            return None
        bufs, pos = [], size
        for n in sizes:
            bufs.append(view[pos:pos + n])
            pos += n
        msg: Message = pickle.loads(view[:size], buffers=bufs)  # noqa: S301 - our worker
        return msg


def _read_into(fd: int, buf: bytearray | memoryview) -> bool:
    view = memoryview(buf)
    while view:
        got = os.readv(fd, [view])
        if not got:
            return False
        view = view[got:]
    return True


def recv_obj(fd: int) -> Any:
    head = bytearray(_LEN.size)
    if not _read_into(fd, head):
        return None
    body = bytearray(_LEN.unpack(head)[0])
    if not _read_into(fd, body):
        return None
    return pickle.loads(body)  # noqa: S301 - from our own worker or parent


_reuse = threading.local()


def _read_buffer(n: int) -> memoryview:
    """``n`` bytes of this thread's read buffer, kept from file to file (grown to the
    next power of two, at most WHOLE_READ).  Why: a fresh buffer of this size is
    a new mmap whose every page faults on first touch; such faults (this buffer's,
    zstd's output's, the ciphertext's) were ~20 % of a backup's CPU on a tree of
    large files."""
    buf: bytearray | None = getattr(_reuse, "buf", None)
    if buf is None or len(buf) < n:
        buf = _reuse.buf = bytearray(min(WHOLE_READ, 1 << (n - 1).bit_length()))
    return memoryview(buf)[:n]


def _chunks(f: LocalFile, params: ChunkerParams, chunker: Any) -> Any:
    """(offset, data) of every chunk of the file's data ranges, as the engine cuts them.
    A chunk may be a view of the thread's read buffer: valid until the next one is
    asked for (``serve_batch`` seals it at once)."""
    for off, length in f.extents():
        if length <= params.min_size:
            buf = f.pread(off, length)
            if buf:
                yield off, buf
        elif length <= WHOLE_READ:
            view = _read_buffer(length)
            got = view[:f.readinto(off, view)]
            if len(got) <= params.min_size:  # shrank since it was listed
                if got:
                    yield off, bytes(got)
                continue
            for c in chunker.cut_buf(got):
                yield off + c.offset, c.data
        else:
            for c in chunker.cut_stream(RangeStream(f, off, length)):
                yield off + c.offset, bytes(c.data)


def _xattrs(fd: int) -> dict[str, bytes] | None:
    """Every readable xattr of the open file (as ``LocalSource.xattrs`` reads them)."""
    try:
        names = os.listxattr(fd)
    except OSError:
        return None
    out = {}
    for name in names:
        with contextlib.suppress(OSError):
            out[name] = os.getxattr(fd, name)
    return out or None


def serve_batch(batch: list[Task], codec: Codec, params: ChunkerParams, chunker: Any,
                send: Callable[[bool, list[Result]], None]) -> None:
    """Read, chunk, hash, compress and seal a batch of files; ``send(last, results)``
    gets the results in parts of about PART_BYTES of sealed data.  Run by the workers,
    and by the parent itself for a batch while every worker is busy enough."""
    out: list[Result] = []
    size = 0
    for token, path, ino in batch:
        try:
            f = LocalFile(path, ino)
        except OSError as exc:
            out.append((token, "error", exc.strerror or repr(exc)))
            continue
        try:
            segs: list[Segment] = []
            for off, data in _chunks(f, params, chunker):
                if is_zero(data):
                    segs.append((off, len(data), None, 0, None))
                    continue
                cid = codec.blob_id(data)
                comp, packed = compress(data)
                sealed = codec.seal_chunk(packed, blob_aad(cid, DATA))
                segs.append((off, len(data), cid, comp, sealed))
                size += len(sealed)
                if size >= PART_BYTES:
                    out.append((token, "part", segs))
                    send(False, out)
                    out, segs, size = [], [], 0
            out.append((token, "part", segs))
            out.append((token, "done", (f.size, _xattrs(f.fd), f.changed())))
        except OSError as exc:
            out.append((token, "error", exc.strerror or repr(exc)))
        finally:
            f.close()
    send(True, out)


def _writer(results: int, out: queue.Queue[Message | None]) -> None:
    """Write result messages as the parent takes them: the reading and compressing
    go on meanwhile (the parent reads between its own files, not at once)."""
    try:
        while (msg := out.get()) is not None:
            _send_results(results, msg)
    except OSError:
        os._exit(1)  # the parent is gone or closed its end: nobody wants the rest


def _serve(tasks: int, results: int, codec: Codec, params: ChunkerParams) -> None:
    chunker = params.make()
    out: queue.Queue[Message | None] = queue.Queue(maxsize=SEND_AHEAD)
    writer = threading.Thread(target=_writer, args=(results, out), name="rvss-results")
    writer.start()

    def send(last: bool, items: list[Result]) -> None:
        out.put((last, items))

    try:
        while True:
            batch: list[Task] | None = recv_obj(tasks)
            if batch is None:
                return
            serve_batch(batch, codec, params, chunker, send)
    finally:
        out.put(None)
        writer.join()


def codec_spec(codec: Codec) -> tuple[str, bytes | None]:
    """The codec as a worker's first message carries it (over its stdin pipe)."""
    if isinstance(codec, Keys):
        return "keys", codec.master
    return ("legacy" if codec.legacy else "plain"), None


def make_codec(kind: str, master: bytes | None) -> Codec:
    if kind == "keys":
        assert master is not None
        return Keys(master)
    return LegacyCodec() if kind == "legacy" else Codec()


def become_worker() -> None:
    """What every worker process does first: the command's glibc settings (freed
    buffers go back at once), the parent's signals ignored (it handles them and
    kills its workers), and death with the parent (PR_SET_PDEATHSIG)."""
    tune_malloc()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if len(sys.argv) > 1 and os.getppid() != int(sys.argv[1]):
        sys.exit(1)  # the parent died before PR_SET_PDEATHSIG was in place


def spawn(module: str) -> subprocess.Popen[bytes]:
    """A new interpreter running ``module`` as a worker: stdin and stdout are its
    pipes, with this process's id as its argument (see ``become_worker``)."""
    src = str(Path(__file__).resolve().parents[2])  # the directory holding remotevss
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen([sys.executable, "-m", module, str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                            close_fds=True, bufsize=0)


def main() -> None:
    """The worker: stdin brings the codec, the chunker and then task batches; stdout
    takes the results."""
    become_worker()
    init = recv_obj(0)
    if init is None:
        return
    kind, master, params = init
    _serve(0, 1, make_codec(kind, master), ChunkerParams.from_json(params))


@dataclass
class _Waiting:
    """A batch not sent yet, and its file bytes (the parent may take files out)."""

    tasks: list[Task]
    nbytes: int


class Worker:
    """One worker process: its task pipe (stdin), result pipe (stdout), and how many
    batches it still owes."""

    def __init__(self, codec: Codec, params: ChunkerParams) -> None:
        self.proc = spawn("remotevss.backup.workers")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid = self.proc.pid
        self.tasks = self.proc.stdin.fileno()
        self.results = self.proc.stdout.fileno()
        self.reader = ResultReader(self.results)
        self.sizes: deque[int] = deque()  # file bytes of each batch not yet answered
        for fd in (self.tasks, self.results):
            with contextlib.suppress(OSError):  # best effort: pipe-max-size, user quota
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        send_obj(self.tasks, (*codec_spec(codec), params.to_json()))

    @property
    def outstanding(self) -> int:
        """Batches sent, not yet answered."""
        return len(self.sizes)

    @property
    def outstanding_bytes(self) -> int:
        return sum(self.sizes)

    def send(self, batch: list[Task], nbytes: int) -> None:
        try:
            send_obj(self.tasks, batch)
        except BrokenPipeError:
            raise self.died() from None
        self.sizes.append(nbytes)

    def answered(self) -> None:
        """The last message of the oldest outstanding batch arrived."""
        self.sizes.popleft()

    def died(self) -> WorkerDied:
        code = self.proc.wait()
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return WorkerDied(f"backup worker process {self.pid} died ({how}); nothing was "
                          "committed, the repository is unchanged apart from packs it "
                          "already indexed (prune reclaims them)")

    def close(self, kill: bool) -> None:
        if kill and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self.proc.wait()


class Pool:
    """``count`` workers; batches go to the one with the fewest outstanding.  Started
    at once; each is busy importing for ~0.1 s, during which its batches queue.

    Each worker gets at most ``per_worker`` batches; more wait in the parent, and
    when ``backlog`` batches wait, the parent reads one of their files itself
    (``inline``) before it would wait: with one worker on two cores the parent
    otherwise spent ~40 % of a full backup of small files idle in select while
    the worker was the bottleneck, and ~half of one of large files (shared
    libraries), where no small file was left to take.  A small file is taken
    first; a large one only when none is waiting and the workers have at least
    as much other work ahead of them (sent or waiting): else a worker would sit
    idle while the parent reads a file it could have had.  Meanwhile the
    parent keeps taking the workers' results and feeding them between the
    file's parts (``poll``)."""

    def __init__(self, count: int, codec: Codec, params: ChunkerParams,
                 per_worker: int = 24, backlog: int = 16,
                 per_worker_bytes: int = PER_WORKER_BYTES) -> None:
        self.workers: list[Worker] = []
        self.per_worker = per_worker
        self.per_worker_bytes = per_worker_bytes
        self.backlog = backlog
        self.waiting: deque[_Waiting] = deque()  # batches not sent yet
        try:
            for _ in range(count):
                self.workers.append(Worker(codec, params))
        except BaseException:
            self.close(kill=True)
            raise

    @property
    def outstanding(self) -> int:
        return sum(w.outstanding for w in self.workers)

    def submit(self, batch: list[Task], on_result: Callable[[list[Result]], None],
               inline: Inline | None = None, nbytes: int = 0) -> None:
        """Queue a batch (of ``nbytes`` file bytes) and send what the workers have
        room for.  Up to ``backlog`` batches wait here, so the walk goes on while
        the workers are busy; beyond that, ``inline`` (if given) does one file
        here, else this waits for a result."""
        self.waiting.append(_Waiting(batch, nbytes))
        while True:
            self.collect(on_result, block=False)
            self._send_waiting()
            if len(self.waiting) <= self.backlog:
                return
            if inline is None or not self._inline_one(inline):
                self.collect(on_result, block=True)

    def _send_waiting(self) -> None:
        """A worker gets at most ``per_worker`` batches and, beyond its first,
        ``per_worker_bytes`` of files: large files left waiting here can still
        be read by the parent, at the end of the run as well."""
        while self.waiting:
            w = min(self.workers, key=lambda w: w.outstanding_bytes)
            if w.outstanding >= self.per_worker or (
                    w.outstanding and w.outstanding_bytes + self.waiting[0].nbytes
                    > self.per_worker_bytes):
                return
            got = self.waiting.popleft()
            w.send(got.tasks, got.nbytes)

    def _inline_one(self, inline: Inline) -> bool:
        """Do the last waiting file that ``inline`` accepts, a small one if there is
        one, else one no larger than the rest of the work ahead of the workers;
        False if there was none.  The last: the batches next in line for the
        workers stay whole.  The task leaves its batch before ``inline`` runs, as
        ``inline`` may send waiting batches (``poll``) while it reads a large file."""
        ahead = (sum(w.outstanding_bytes for w in self.workers)
                 + sum(b.nbytes for b in self.waiting))
        for limit in (SMALL_FILE, ahead // 2):  # at most the rest: ahead - size >= size
            for b in range(len(self.waiting) - 1, -1, -1):
                batch = self.waiting[b]
                tasks = batch.tasks
                for i in range(len(tasks) - 1, -1, -1):
                    task = tasks.pop(i)
                    emptied = not tasks
                    if emptied:  # not to be sent, empty, while ``inline`` runs
                        del self.waiting[b]
                    if inline(task, limit):
                        return True
                    tasks.insert(i, task)  # refused before anything was read
                    if emptied:
                        self.waiting.insert(b, batch)
        return False

    def poll(self, on_result: Callable[[list[Result]], None]) -> None:
        """Take every ready result and keep the workers fed, without waiting: called
        by the parent between the parts of a large file it reads itself, so the
        workers neither stall on a full result pipe nor run out of batches."""
        self.collect(on_result, block=False)
        self._send_waiting()

    def collect(self, on_result: Callable[[list[Result]], None], block: bool) -> bool:
        """Hand every result message that is ready to ``on_result`` (wait for one
        if ``block``); False when there was none.  A worker's sealed chunks are
        memoryviews valid during the call only (``ResultReader``)."""
        busy = [w for w in self.workers if w.outstanding]
        if not busy:
            return False
        ready, _, _ = select.select([w.results for w in busy], [], [], None if block else 0)
        if not ready:
            return False
        for w in busy:
            if w.results not in ready:
                continue
            msg: Message | None = w.reader.read()
            if msg is None:
                raise w.died()
            last, items = msg
            if last:
                w.answered()
            on_result(items)
        return True

    def drain(self, on_result: Callable[[list[Result]], None],
              inline: Inline | None = None) -> None:
        """Wait for every batch, doing waiting files with ``inline`` meanwhile."""
        while self.waiting or self.outstanding:
            self._send_waiting()
            if self.collect(on_result, block=False):
                continue
            if inline is None or not self._inline_one(inline):
                self.collect(on_result, block=True)

    def close(self, kill: bool = False) -> None:
        for w in self.workers:
            w.close(kill)
        self.workers = []


if __name__ == "__main__":
    main()
