"""Worker processes for local sources, against real files and real processes: the same
repository content as the threads alone, and a worker that dies fails the run
without harming the repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from remotevss.backup.backup import run_backup
from remotevss.backup.repo import Repository, init_repo
from remotevss.backup.restore import restore
from remotevss.backup.snapshot_source import LocalSource
from remotevss.backup.tree import decode_tree, walk
from tests.support.backup_cli import CLI, cli, rand
from tests.system.test_backup import assert_same_tree, make_tree

PASS = "workers test passphrase"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _entries(repo: Repository, point_id: int, label: str) -> dict[str, dict[str, object]]:
    """Every entry of the point below its label, as stored (content lists with their
    chunk ids, xattrs, times), with the label taken out of paths and hardlink
    targets, and subdirectories' tree ids left out (they name the label too)."""

    def load(tid: bytes) -> list[dict[str, object]]:
        return decode_tree(repo.read_blob(tid))

    out = {}
    for path, e in walk(load, repo.find_point(str(point_id)).root, ""):
        if path == label:
            continue
        entry = {k: v for k, v in e.items() if k != "subtree"}
        if "link" in entry:
            entry["link"] = str(entry["link"]).removeprefix(label + "/")
        out[path.removeprefix(label + "/")] = entry
    return out


def test_workers_store_what_the_threads_store(tmp_path: Path) -> None:
    """Small files, a file larger than one read (cut as a stream), a sparse file, an
    all-zero file, xattrs, symlinks: backed up once by the threads and once by two
    worker processes (same tree, two labels, one repository): every entry,
    content list and chunk id is identical, the second run stores no file data
    at all, and the restore is identical."""
    src, repo_path = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    make_tree(src, small=300, dense=[3 << 20, 20 << 20], sparse=[24 << 20])
    (src / "zeros.bin").write_bytes(bytes(3 << 20))
    os.setxattr(src / "zeros.bin", "user.kind", b"zeros")
    init_repo(repo_path, passphrase=PASS)
    with Repository(repo_path, "write", passphrase=PASS) as repo:
        threads = run_backup(repo, [LocalSource(src, "one")], processes=0)
    with Repository(repo_path, "write", passphrase=PASS) as repo:
        procs = run_backup(repo, [LocalSource(src, "two")], processes=2, processes_from=0)
    assert procs.stats["bytes_read"] == threads.stats["bytes_read"] > 30 << 20
    assert procs.stats["new_blobs"] <= procs.stats["dirs"] + 2  # trees and the record only
    with Repository(repo_path, "read", passphrase=PASS) as repo:
        two = _entries(repo, procs.id, "two")
        assert two == _entries(repo, threads.id, "one")
        assert sum(len(e.get("content", ())) for e in two.values()) > 40  # type: ignore[misc, arg-type]
        restore(repo, repo.find_point(str(procs.id)), tmp_path / "out", "two")
    assert_same_tree(src, tmp_path / "out")


def test_the_parent_reads_large_files_too_when_no_small_one_waits(tmp_path: Path) -> None:
    """A tree of large files only (as shared libraries are): with one worker, the
    parent takes large files itself instead of idling, taking the worker's results
    between their parts; every entry and chunk id is what the threads store, and
    the point restores identically."""
    src, repo_path = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    for i in range(24):
        (src / f"lib{i:02d}.so").write_bytes(rand(f"large{i}", (2 << 20) + 4099 * i))
    init_repo(repo_path, passphrase=PASS)
    with Repository(repo_path, "write", passphrase=PASS) as repo:
        threads = run_backup(repo, [LocalSource(src, "one")], processes=0)
    with Repository(repo_path, "write", passphrase=PASS) as repo:
        procs = run_backup(repo, [LocalSource(src, "two")], processes=1, processes_from=0)
    total = sum(p.stat().st_size for p in src.iterdir())
    assert procs.stats["bytes_read"] == threads.stats["bytes_read"] == total
    assert procs.stats["new_blobs"] <= 2  # the tree and the record: no chunk was new
    # The parent read some of the files, every one larger than what it took
    # before, and not all of them: the worker did its share.
    assert 2 << 20 <= procs.stats["parent_read"] < total, procs.stats
    with Repository(repo_path, "read", passphrase=PASS) as repo:
        assert _entries(repo, procs.id, "two") == _entries(repo, threads.id, "one")
        restore(repo, repo.find_point(str(procs.id)), tmp_path / "out", "two")
    assert_same_tree(src, tmp_path / "out")


def test_a_killed_worker_fails_the_run_and_leaves_the_repository_checkable(
        tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    (src / "small").mkdir(parents=True)
    for i in range(50):
        (src / "small" / f"f{i}").write_bytes(rand(f"s{i}", 1000 + i))
    for i in range(24):  # 192 MiB: the workers start after 32 MiB, the rest takes a while
        (src / f"big{i:02d}.bin").write_bytes(rand(f"b{i}", 8 << 20))
    cli("init", "--repo", repo, "--pack-size", "8")
    cli("run", f"data={src / 'small'}", "--repo", repo)  # point 1: the earlier point
    proc = subprocess.Popen([*CLI, "run", f"all={src}", "--repo", str(repo), "--processes", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(kids := _children(proc.pid)) < 2:
        assert proc.poll() is None, ("the run ended before its workers started",
                                     proc.communicate())
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(kids[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert f"backup worker process {kids[0]} died (killed by signal 9)" in err
    assert "nothing was committed" in err
    for pid in kids:  # the other worker is gone too
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()
    assert "1 points: ok" in cli("check", "--repo", repo).stdout
    assert [p["id"] for p in json.loads(cli("list", "--repo", repo, "--json").stdout)] == [1]
    cli("restore", "1", "--repo", repo, "--path", "data", "--to", tmp_path / "r1")
    assert_same_tree(src / "small", tmp_path / "r1")
    cli("run", f"all={src}", "--repo", repo)  # and the next run completes
    cli("restore", "2", "--repo", repo, "--path", "all", "--to", tmp_path / "r2")
    assert_same_tree(src, tmp_path / "r2")


def test_a_sigkilled_run_leaves_no_worker_behind(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    for i in range(24):
        (src / f"big{i:02d}.bin").write_bytes(rand(f"b{i}", 8 << 20))
    cli("init", "--repo", repo)
    proc = subprocess.Popen([*CLI, "run", f"all={src}", "--repo", str(repo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (kids := _children(proc.pid)):  # the default: one worker
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in kids):
        assert time.monotonic() < deadline, "a worker outlived its SIGKILLed parent"
        time.sleep(0.01)
    assert cli("check", "--repo", repo).returncode == 0
    cli("run", f"all={src}", "--repo", repo)
    cli("restore", "latest", "--repo", repo, "--path", "all", "--to", tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")


def test_the_parent_reads_files_itself_while_its_worker_is_busy(tmp_path: Path) -> None:
    """With one batch allowed per worker and none waiting, the parent reads files of
    the waiting batches itself (a real worker process meanwhile does the rest);
    every file gets exactly one answer, and the parent's sealed chunks open to the
    same data under the same ids as the worker's."""
    from remotevss.backup.chunker import decompress
    from remotevss.backup.packs import DATA, blob_aad
    from remotevss.backup.workers import Pool, Result, Task, serve_batch

    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(120):
        path = src / f"f{i:03d}"
        path.write_bytes(rand(f"p{i}", 2000 + 37 * i) * (1 + i % 3))
        files.append((i, str(path), path.stat().st_ino))
    init_repo(tmp_path / "repo", passphrase=PASS)
    with Repository(tmp_path / "repo", "write", passphrase=PASS) as repo:
        codec, params = repo.codec, repo.chunker
        chunker = params.make()
        done: dict[int, str] = {}
        data: dict[int, list[tuple[int, int, bytes | None, int, bytes | None]]] = {}

        def on_result(items: list[Result], who: str = "worker") -> None:
            for token, kind, payload in items:
                if kind == "part":  # sealed chunks are valid during the call only: copied
                    data.setdefault(token, []).extend(
                        (o, n, c, m, None if b is None else bytes(b)) for o, n, c, m, b in payload)
                else:
                    assert kind == "done", payload
                    assert token not in done, "a file answered twice"
                    done[token] = who

        def inline(task: Task, _limit: int) -> bool:
            serve_batch([task], codec, params, chunker,
                        lambda _last, items: on_result(items, "parent"))
            return True

        pool = Pool(1, codec, params, per_worker=1, backlog=0)
        try:
            for i in range(0, len(files), 8):
                pool.submit(files[i:i + 8], on_result, inline)
            pool.drain(on_result, inline)
        finally:
            pool.close()
        assert sorted(done) == [t for t, _p, _i in files]
        by = list(done.values())
        assert by.count("parent") > 0 and by.count("worker") > 0, by
        for token, path, _ino in files:
            raw = Path(path).read_bytes()
            got = b""
            for off, n, cid, comp, sealed in data[token]:
                assert off == len(got) and cid == codec.blob_id(raw[off:off + n])
                assert sealed is not None
                got += decompress(comp, codec.open(sealed, blob_aad(cid, DATA)), n)
            assert got == raw


def test_a_file_the_parent_takes_is_not_sent_while_it_reads_it(tmp_path: Path) -> None:
    """The parent takes a waiting batch's only (large) file and, while reading it,
    keeps the worker fed (``Pool.poll``) after the worker became free: the batch
    it emptied is not sent, so the file is read once, by the parent."""
    from remotevss.backup.workers import Pool, Result, Task, serve_batch

    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(3):
        path = src / f"f{i}"
        path.write_bytes(rand(f"q{i}", 3 << 20))
        files.append((i, str(path), path.stat().st_ino))
    init_repo(tmp_path / "repo", passphrase=PASS)
    with Repository(tmp_path / "repo", "write", passphrase=PASS) as repo:
        codec, params = repo.codec, repo.chunker
        chunker = params.make()
        answers: list[tuple[int, str]] = []

        def on_result(items: list[Result], who: str = "worker") -> None:
            answers.extend((token, who) for token, kind, _p in items if kind != "part")

        pool = Pool(1, codec, params, per_worker=1, backlog=0)

        def inline(task: Task, limit: int) -> bool:
            if limit < 3 << 20:
                return False  # the small-file pass (these files are larger)
            while len(answers) < 1:  # the worker's first file: it is free now
                pool.collect(on_result, block=True)
            pool.poll(on_result)  # would send the emptied batch if it were still waiting
            serve_batch([task], codec, params, chunker,
                        lambda _last, items: on_result(items, "parent"))
            return True

        try:
            pool.submit([files[0]], on_result, inline, 3 << 20)
            pool.submit([files[1]], on_result, inline, 3 << 20)  # the parent takes it
            pool.submit([files[2]], on_result, inline, 3 << 20)
            pool.drain(on_result, inline)
        finally:
            pool.close()
        assert sorted(t for t, _who in answers) == [0, 1, 2], answers  # once each
        assert dict(answers)[1] == "parent" and dict(answers)[0] == "worker"


def test_files_read_one_after_another_through_one_buffer(tmp_path: Path) -> None:
    """``serve_batch`` reads large files into one kept buffer (no fresh mmap per file):
    a large file, then a smaller one, then one just above the chunker's minimum,
    then a large one again; every chunk opens to its file's bytes, and the buffer
    is the same object throughout."""
    from remotevss.backup import workers
    from remotevss.backup.chunker import decompress
    from remotevss.backup.packs import DATA, blob_aad
    from remotevss.backup.workers import Result, serve_batch

    init_repo(tmp_path / "repo", passphrase=PASS)
    sizes = [6 << 20, 3 << 20, (256 << 10) + 1, 5 << 20]
    paths = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i}"
        p.write_bytes(rand(f"buf{i}", n) if i % 2 else bytes(1000) + rand(f"buf{i}", n - 1000))
        paths.append(p)
    with Repository(tmp_path / "repo", "write", passphrase=PASS) as repo:
        codec, params = repo.codec, repo.chunker
        chunker = params.make()
        bufs = []
        for token, p in enumerate(paths):
            got: list[Result] = []
            serve_batch([(token, str(p), p.stat().st_ino)], codec, params, chunker,
                        lambda _last, items, got=got: got.extend(items))
            bufs.append(workers._reuse.buf)
            data = b""
            for _t, kind, payload in got:
                if kind != "part":
                    continue
                for off, n, cid, comp, sealed in payload:
                    assert off == len(data)
                    raw = decompress(comp, codec.open(bytes(sealed), blob_aad(cid, DATA)), n)
                    assert cid == codec.blob_id(raw)
                    data += raw
            assert data == p.read_bytes()
        assert all(b is bufs[0] for b in bufs) and len(bufs[0]) == 8 << 20
