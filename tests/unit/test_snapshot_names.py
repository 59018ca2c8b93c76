"""Snapshot names: ``unique`` (default) and ``gmt`` (exact @GMT tokens for shadow_copy2)."""

from __future__ import annotations

import calendar
import uuid

import pytest

from remotevss.agent.config import ConfigError, load_config
from remotevss.agent.naming import gmt_seconds, gmt_snapshot_name, snapshot_name

T = calendar.timegm((2026, 11, 22, 8, 4, 18, 0, 0, 0)) + 0.5
CID = uuid.UUID("93e92ee8-2018-4b6f-80eb-beb7c64ee9c6")


def test_unique_names_carry_microseconds_and_the_copy_id() -> None:
    assert snapshot_name(T, CID) == "@GMT-2026.11.22-08.04.18.500000-93e92ee8"
    assert gmt_seconds(snapshot_name(T, CID)) == int(T)


def test_gmt_names_are_exact_tokens() -> None:
    assert gmt_snapshot_name(T, []) == "@GMT-2026.11.22-08.04.18"
    assert gmt_snapshot_name(T, ["unrelated", ".hidden", "@GMT-garbage"]) == (
        "@GMT-2026.11.22-08.04.18"
    )
    assert gmt_snapshot_name(T, ["@GMT-2026.11.22-08.04.17"]) == "@GMT-2026.11.22-08.04.18"


def test_gmt_names_within_one_second_move_on_and_stay_sorted() -> None:
    taken: list[str] = []
    for _ in range(3):  # three snapshots within the same second
        taken.append(gmt_snapshot_name(T, taken))
    assert taken == [
        "@GMT-2026.11.22-08.04.18",
        "@GMT-2026.11.22-08.04.19",
        "@GMT-2026.11.22-08.04.20",
    ]
    # a later snapshot never sorts before an existing one, even if a gap was freed
    del taken[1]
    assert gmt_snapshot_name(T + 1, taken) == "@GMT-2026.11.22-08.04.21"
    # a unique-style name of the same second counts as taken
    assert gmt_snapshot_name(T, [snapshot_name(T, CID)]) == "@GMT-2026.11.22-08.04.19"


def test_gmt_seconds_rejects_impossible_dates() -> None:
    assert gmt_seconds("@GMT-2026.13.45-08.04.18") is None
    assert gmt_seconds("x@GMT-2026.11.22-08.04.18") is None


def test_config_key() -> None:
    assert load_config(None).snapshot_names == "unique"
    assert load_config(None, snapshot_names="gmt").snapshot_names == "gmt"
    with pytest.raises(ConfigError, match="snapshot_names"):
        load_config(None, snapshot_names="dated")
