"""The one table of FSRVP context names and the one FILETIME conversion."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from remotevss.fsrvp import contexts, filetime
from remotevss.fsrvp.constants import (
    CTX_APP_ROLLBACK,
    CTX_BACKUP,
    CTX_FILE_SHARE_BACKUP,
    CTX_NAS_ROLLBACK,
    Attr,
)


def test_both_spellings_name_the_same_context() -> None:
    for hyphen, under in zip(contexts.NAMES, contexts.CONFIG_NAMES, strict=True):
        assert contexts.context_from_name(hyphen) == contexts.context_from_name(under)
    assert contexts.context_from_name("File_Share_Backup") == CTX_FILE_SHARE_BACKUP
    assert contexts.context_from_name("NAS-ROLLBACK") == CTX_NAS_ROLLBACK
    assert contexts.context_from_name("nas rollback") is None
    assert contexts.context_from_name("") is None


def test_each_consumer_gets_its_spelling() -> None:
    assert contexts.NAMES == ("backup", "file-share-backup", "nas-rollback", "app-rollback")
    assert contexts.CONFIG_NAMES == ("backup", "file_share_backup", "nas_rollback", "app_rollback")
    assert contexts.context_name(CTX_APP_ROLLBACK) == "app-rollback"
    assert contexts.context_name(CTX_APP_ROLLBACK, underscored=True) == "app_rollback"
    assert contexts.canonical_name("app_rollback") == "app-rollback"
    assert contexts.canonical_name("nope") == "nope"


def test_recovery_bits_are_ignored_and_unknown_values_have_no_name() -> None:
    writable = CTX_NAS_ROLLBACK | Attr.ATTR_AUTO_RECOVERY
    assert contexts.base_context(writable) == CTX_NAS_ROLLBACK
    assert contexts.context_name(writable) == "nas-rollback"
    assert contexts.context_name(CTX_BACKUP | Attr.ATTR_NO_AUTO_RECOVERY) == "backup"
    assert contexts.context_name(CTX_BACKUP | Attr.ATTR_PERSISTENT) is None
    expected = [CTX_BACKUP, CTX_FILE_SHARE_BACKUP, CTX_NAS_ROLLBACK, CTX_APP_ROLLBACK]
    assert sorted(contexts.BASE_CONTEXTS) == sorted(expected)


def test_filetime_round_trips() -> None:
    when = datetime(2024, 2, 29, 12, 30, 15, tzinfo=UTC)
    ft = filetime.from_unix(when.timestamp())
    assert ft == 133_536_834_150_000_000  # (1709209815 s + 11644473600 s) in 100 ns
    assert filetime.to_datetime(ft) == when
    assert filetime.from_unix(0) == filetime.EPOCH_OFFSET_TICKS
    assert filetime.to_unix_ns(filetime.EPOCH_OFFSET_TICKS + 7) == 700
    assert filetime.from_unix_ns(700) == filetime.EPOCH_OFFSET_TICKS + 7
    assert filetime.from_unix_ns(799) == filetime.EPOCH_OFFSET_TICKS + 7  # truncated


@pytest.mark.parametrize("ft", [0, None])
def test_filetime_zero_means_unknown(ft: int | None) -> None:
    assert filetime.to_datetime(ft) is None
    assert filetime.to_unix_ns(0) == 0
    assert filetime.from_unix_ns(ft) == 0


def test_filetime_out_of_range_is_unknown_not_an_error() -> None:
    assert filetime.to_datetime(2**63 - 1) is None


def test_client_cli_and_scripts_take_both_spellings() -> None:
    from remotevss.cli import build_parser
    from remotevss.client.cli import ScriptRunner, Session, Settings
    from remotevss.client.cli.script import ScriptError

    args = build_parser().parse_args(["shadow", "create", "--context", "nas_rollback", r"\\h\s"])
    assert args.context == "nas-rollback"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shadow", "create", "--context", "nas rollback"])
    runner = ScriptRunner(Session(Settings()))
    runner.line("set context file_share_backup writable")
    assert (runner.context, runner.writable) == ("file-share-backup", True)
    with pytest.raises(ScriptError, match="unknown context"):
        runner.line("set context nope")
    assert runner.context == "file-share-backup"
