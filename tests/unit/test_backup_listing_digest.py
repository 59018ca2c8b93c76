"""The listing digest (backup/listing.py) that lets an unchanged directory be
skipped: every listed field that goes into the directory's tree or the
files-cache key moves it, the owner names included; the device does not
(snapshots of one tree differ in it); a file with several links gives none."""

from __future__ import annotations

import dataclasses

import pytest

from remotevss.backup.listing import listing_digest
from remotevss.backup.snapshot_source import DIR, FILE, SYMLINK, SourceEntry


class Names:
    """A source's owner names by id, as LocalSource's (pwd/grp) are."""

    def __init__(self, users: dict[int, str]) -> None:
        self.users = users

    def owner(self, e: SourceEntry) -> tuple[str | None, str | None]:
        return self.users.get(e.uid), self.users.get(e.gid)


def _listing() -> list[SourceEntry]:
    return [SourceEntry("a.txt", FILE, 0o644, 1000, 1000, 12, 5, 6, 7, 100, 9, 1),
            SourceEntry("b", DIR, 0o755, 0, 0, 4096, 5, 6, 7, 101, 9, 2),
            SourceEntry("c", SYMLINK, 0o777, 1000, 0, 1, 5, 6, 7, 102, 9, 1, target="a.txt")]


NAMES = Names({0: "root", 1000: "alice"})


@pytest.mark.parametrize("field,value", [
    ("name", "a2.txt"), ("mode", 0o600), ("uid", 5), ("gid", 5), ("size", 13),
    ("mtime_ns", 50), ("atime_ns", 60), ("ctime_ns", 70), ("ino", 200), ("rdev", 1),
    ("attributes", 32), ("btime_ns", 1)])
def test_every_listed_field_of_the_tree_moves_the_digest(field: str, value: object) -> None:
    base = listing_digest(_listing(), NAMES)
    for i in range(3):
        changed = _listing()
        changed[i] = dataclasses.replace(changed[i], **{field: value})
        assert listing_digest(changed, NAMES) != base, (field, i)


def test_targets_and_owner_names_move_it_the_device_does_not() -> None:
    base = listing_digest(_listing(), NAMES)
    assert base is not None and listing_digest(_listing(), NAMES) == base
    other = _listing()
    other[2] = dataclasses.replace(other[2], target="b")
    assert listing_digest(other, NAMES) != base
    assert listing_digest(_listing(), Names({0: "root", 1000: "bob"})) != base
    assert listing_digest(_listing(), Names({0: "root"})) != base  # a name now unknown
    moved = [dataclasses.replace(e, dev=77) for e in _listing()]
    assert listing_digest(moved, NAMES) == base
    assert listing_digest([], NAMES) is not None


def test_a_file_with_several_links_gives_no_digest() -> None:
    linked = _listing()
    linked[0] = dataclasses.replace(linked[0], nlink=2)
    assert listing_digest(linked, NAMES) is None
    assert listing_digest(_listing(), NAMES) is not None  # a directory's links do not count
