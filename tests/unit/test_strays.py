"""Strays' pure rules (agent/strays.py): which labelled snapshots the journal does
not know, which are collected and which kept, and how they are listed.  The
same rules on real ZFS: tests/system/test_zfs_strays.py."""

from __future__ import annotations

import uuid

import pytest

from remotevss.agent.admin_cli import _sets_text, stray_sets
from remotevss.agent.journal import Intent
from remotevss.agent.release import describe
from remotevss.agent.strays import Stray, agent_identity, collectable, unknown
from remotevss.fsrvp.constants import CTX_BACKUP
from remotevss.fsrvp.machine import DeleteSnapshot, MappedShare, ShadowCopy, ShadowCopySet, Status

SNAPDIR = "/tank/data/.snapshots"


def stray(name: str, copy: str = "", context: str = "backup", held: bool = False) -> Stray:
    return Stray("zfs:/tank/data", f"{SNAPDIR}/@{name}", f"tank/data@{name}",
                 str(uuid.UUID(int=1)), copy or str(uuid.uuid4()), context, held)


def a_set(path: str, copy_id: uuid.UUID | None = None) -> ShadowCopySet:
    c = ShadowCopy(copy_id or uuid.uuid4(), "zfs:/tank/data", 0.0,
                   [MappedShare("\\\\fs\\data\\", "data")], path)
    return ShadowCopySet(uuid.uuid4(), Status.RECOVERED, CTX_BACKUP, [c])


def test_known_by_a_set_or_a_pending_intent_is_not_a_stray() -> None:
    in_set, spelled, creating, deleting, by_copy, lost = (
        stray(n) for n in ("GMT-a", "GMT-b", "GMT-c", "GMT-d", "GMT-e", "GMT-f"))
    sets = [a_set(in_set.path),
            a_set(f"{SNAPDIR}/GMT-b"),  # the journal's spelling without the leading "@"
            a_set("", uuid.UUID(by_copy.copy_id))]  # snapshot not recorded yet: its copy id
    intents = [Intent(1, "create_snapshot", {"volume": "zfs:/tank/data", "path": creating.path,
                                             "copy": str(uuid.uuid4())}),
               Intent(2, "delete_snapshot", {"volume": "zfs:/tank/data", "path": deleting.path})]
    found = [in_set, spelled, creating, deleting, by_copy, lost]
    assert unknown(found, sets, intents) == [lost]


@pytest.mark.parametrize(("context", "held", "persistent"), [
    ("backup", False, False),
    ("file_share_backup", False, False),
    ("file-share-backup", False, False),
    ("backup", True, True),  # a hold (ours or anyone's) always keeps it
    ("app_rollback", False, True),
    ("nas_rollback", False, True),
    ("", False, True),  # no context label: kept
    ("FSRVP_CTX_SOMETHING", False, True),  # unknown: kept
])
def test_only_plainly_auto_release_strays_are_collected(context: str, held: bool,
                                                       persistent: bool) -> None:
    x = stray("GMT-x", context=context, held=held)
    assert x.persistent is persistent
    done: list = []
    effects = collectable([x], done)
    if persistent:
        assert effects == [] and done == []
    else:
        assert effects == [DeleteSnapshot(uuid.UUID(x.copy_id), x.volume, x.path)]
        ev = describe(None, done[0])
        assert (ev["event"], ev["reason"], ev["status"], ev["set"]) == (
            "gc_delete", "stray", "stray", x.set_id)
        assert ev["copies"] == [{"id": x.copy_id, "volume": x.volume, "snapshot": x.path,
                                 "zfs": x.zfs_name, "held": False, "shares": []}]


def test_unparsable_labels_still_make_a_pick() -> None:
    x = Stray("zfs:/tank/data", f"{SNAPDIR}/@GMT-z", "tank/data@GMT-z", "S", "C", "backup", False)
    done: list = []
    (effect,) = collectable([x], done)
    assert effect == DeleteSnapshot(uuid.UUID(int=0), x.volume, x.path)
    assert done[0].set_id == uuid.UUID(int=0)


def test_identity_is_the_state_directory() -> None:
    assert agent_identity("/var/lib/remotevss/../remotevss") == "/var/lib/remotevss"


def test_kept_strays_are_listed_as_sets(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = stray("GMT-x", context="app_rollback", held=True), stray("GMT-y", context="")
    listed = stray_sets([x.as_dict(), y.as_dict()])
    assert len(listed) == 1 and listed[0]["status"] == "stray"
    assert [c["zfs"] for c in listed[0]["copies"]] == [x.zfs_name, y.zfs_name]
    _sets_text(listed)
    out = capsys.readouterr().out
    assert f"set {x.set_id}  stray  app_rollback (persistent)" in out
    assert "not in its journal" in out and "sets delete" in out
    assert f"[{x.zfs_name}, held]" in out and f"[{y.zfs_name}]" in out
