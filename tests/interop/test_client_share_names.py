r"""Share names Windows refuses but Samba serves, through ``remotevss shadow``.

Samba serves shares named ``data+1`` (an smb.conf section) and ``x[1]`` (a
registry share; an smb.conf section name cannot hold ``]``), and both Samba's
own rpcd_fsrvp and our agent snapshot and expose them.  The client refused
them with Windows' share-name rule (exit 2, nothing sent) although rpcclient's
``fss_create_expose`` works.  Against each server: query, create, read the
snapshot, list, delete; nothing left behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_client_samba import Server, _make_server, cli, sets, state

from remotevss.samba.private import missing_tools

TOOLS = ("smbd", "smbpasswd", "net", "mkfs.btrfs")
_missing = missing_tools(*TOOLS)
_no_rpcd_fsrvp = not Path("/usr/libexec/samba/rpcd_fsrvp").exists()
__all__ = ["state"]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (smbd, loop btrfs)"),
    pytest.mark.skipif(bool(_missing), reason=f"missing Samba/system tools: {_missing}"),
]

#: Served by Samba, refused by Windows.
NAMES = ("data+1", "x[1]", "a,b;c=d")


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    from remotevss.loopfs import loop_filesystem

    work = tmp_path_factory.mktemp("client-share-names")
    with loop_filesystem("btrfs", 512, work) as mnt:
        yield work, mnt


@pytest.fixture(scope="module", params=["samba", "agent"])
def server(request: pytest.FixtureRequest, btrfs: tuple[Path, Path]) -> Iterator[Server]:
    """Samba's FSRVP server, then ours, each with the punctuated shares as registry
    shares (``net conf``: smb.conf cannot name ``x[1]``)."""
    import btrfsutil

    kind = request.param
    if kind == "samba" and _no_rpcd_fsrvp:
        pytest.skip("Samba's rpcd_fsrvp is not installed")
    work, mnt = btrfs
    s = _make_server(work / kind, mnt, f"{kind}n", 0, agent=kind == "agent")
    try:
        for i, name in enumerate(NAMES):
            path = mnt / f"{kind}-punct{i}"
            btrfsutil.create_subvolume(str(path))
            (path / "f.txt").write_text(f"{name}: version 1\n")
            for param, value in (("path", str(path)), ("read only", "no"),
                                 ("vfs objects", "btrfs"),
                                 ("btrfs: manipulate snapshots", "yes")):  # fmt: skip
                s.samba.net("conf", "setparm", name, param, value)
            s.shares[name] = path
        yield s
    finally:
        s.stop()


@pytest.fixture
def clean(server: Server) -> Iterator[Server]:
    assert server.leftovers() == []
    yield server
    assert server.leftovers() == [], "left on the server"


@pytest.mark.parametrize("share", NAMES)
def test_punctuated_share_names_are_passed_to_the_server(
    clean: Server, state: Path, share: str
) -> None:
    srv = clean
    unc = srv.unc(share)
    r = cli(srv, state, "query", unc)
    assert r.returncode == 0, r.stderr
    assert f"{unc}: supported (owner ANCHORFS)" in r.stdout

    r = cli(srv, state, "--json", "create", unc)
    assert r.returncode == 0, r.stderr
    (created,) = json.loads(r.stdout)["sets"]
    (copy,) = created["copies"]
    assert copy["original_share"] == unc
    assert copy["exposed_name"] == f"{share}@{{{copy['copy_id']}}}"
    assert copy["snapshot_share"] == f"{unc}@{{{copy['copy_id']}}}"
    (srv.shares[share] / "f.txt").write_text(f"{share}: version 2\n")
    assert srv.read(copy["exposed_name"]) == f"{share}: version 1\n".encode()

    r = cli(srv, state, "list")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert f"Original share:  {unc}\n" in r.stdout

    r = cli(srv, state, "delete", created["set_id"])
    assert r.returncode == 0, r.stderr
    assert sets(srv, state) == []
