"""docs/decisions.md says in prose what fsrvp/rules.py holds as data: they must agree.

The machine reads fsrvp/rules.py; tests/unit/test_machine.py checks the
machine against its own independent state x call table; this test checks the
decisions document against the data, row by row, so none of the three can
drift alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from remotevss.fsrvp.constants import HResult, hresult_name
from remotevss.fsrvp.rules import READINGS, Call, Mode, Status

DOC = Path(__file__).resolve().parents[2] / "docs" / "decisions.md"


def _rows() -> dict[str, tuple[str, str, str]]:
    """Row number -> (question, spec cell, samba cell) of the decisions table."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


ROWS = _rows()


def _names(code: int) -> tuple[str, str]:
    """How the document may name a code: in full, or without its FSRVP_E_ prefix."""
    name = hresult_name(code)
    return name, name.removeprefix("FSRVP_E_")


def _says(cell: str, code: int) -> bool:
    return any(n in cell for n in _names(code)) or f"0x{code:08X}" in cell


def _statuses(text: str) -> set[Status]:
    return {s for s in Status if s.value in text}


def test_the_table_is_there() -> None:
    assert {"3", "4", "5", "6", "7", "8"} <= set(ROWS)


@pytest.mark.parametrize(("row", "field"), [
    ("3", "unknown_set"), ("4", "unknown_copy_on_delete"), ("5", "bad_context"),
])
def test_codes_per_reading(row: str, field: str) -> None:
    _q, spec, samba = ROWS[row]
    spec_code = getattr(READINGS[Mode.SPEC], field)
    samba_code = getattr(READINGS[Mode.SAMBA], field)
    assert _says(spec.split(";")[0], spec_code), (row, spec, hresult_name(spec_code))
    assert _says(samba.split(";")[0].split("(")[0], samba_code), (row, samba)


def test_row_3_delete_share_mapping_answers_object_not_found_in_both() -> None:
    _q, spec, samba = ROWS["3"]
    for cell in (spec, samba):
        assert "DeleteShareMapping: OBJECT_NOT_FOUND" in cell


def test_row_6_what_blocks_start() -> None:
    """The states a column names are exactly those that do not block."""
    _q, spec, samba = ROWS["6"]
    for mode, cell in ((Mode.SPEC, spec), (Mode.SAMBA, samba)):
        assert _statuses(cell) == set(Status) - READINGS[mode].blocking, (mode, cell)


def test_row_7_abort_of_finished_sets() -> None:
    question, spec, samba = ROWS["7"]
    named = _statuses(question)
    assert named == READINGS[Mode.SAMBA].abort_noop  # Samba: "ZERO, no-op"
    assert "no-op" in samba and "ZERO" in samba
    assert named <= READINGS[Mode.SPEC].allowed[Call.ABORT] and "deleted" in spec
    assert not READINGS[Mode.SPEC].abort_noop
    # Samba's CreationInProgress: neither dropped nor a no-op, BAD_STATE
    cip = Status.CREATION_IN_PROGRESS
    samba_rules = READINGS[Mode.SAMBA]
    assert cip not in samba_rules.allowed[Call.ABORT] | samba_rules.abort_noop
    assert f"{cip.value}: BAD_STATE" in samba
    assert samba_rules.code_for_state(Call.ABORT) == HResult.FSRVP_E_BAD_STATE


def test_row_8_get_share_mapping_on_recovered() -> None:
    _q, spec, samba = ROWS["8"]
    spec_rules, samba_rules = READINGS[Mode.SPEC], READINGS[Mode.SAMBA]
    assert Status.RECOVERED not in spec_rules.allowed[Call.GET_SHARE_MAPPING]
    assert _says(spec, spec_rules.code_for_state(Call.GET_SHARE_MAPPING))
    assert Status.RECOVERED in samba_rules.allowed[Call.GET_SHARE_MAPPING]
    assert samba.startswith("allowed")
    assert _says(samba, samba_rules.code_for_state(Call.GET_SHARE_MAPPING))
    # "Started…Committed": the states before Exposed get Windows 2012's code
    before = {Status.STARTED, Status.ADDED, Status.CREATION_IN_PROGRESS, Status.COMMITTED}
    assert before.isdisjoint(samba_rules.allowed[Call.GET_SHARE_MAPPING])
