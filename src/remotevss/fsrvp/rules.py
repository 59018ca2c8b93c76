"""MS-FSRVP's per-call rules as data: the set states each call proceeds in, and the
codes that differ between the two readings of the protocol.

Why data: the rules are a table (state x call -> proceed or which code), and
the sources disagree on some cells (fsrvp-spec §9; the choices are
docs/decisions.md's rows).  Kept here once, the machine (fsrvp/machine.py)
reads them instead of spelling them out in branches;
tests/unit/test_machine.py keeps its own independent state x call table as
the oracle, and tests/unit/test_rules_doc.py checks docs/decisions.md's rows
against this module.

Rules of this module: pure data, no logic beyond lookups.  What is procedure
rather than a table cell (SetContext's client-address and retry rules, the
check order of AddToShadowCopySet, level checks) stays in the machine.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from remotevss.fsrvp.constants import HResult


class Mode(enum.StrEnum):
    """Which reading of the protocol to follow where sources disagree."""

    SPEC = "spec"
    SAMBA = "samba"


class Status(enum.StrEnum):
    """The six set states of MS-FSRVP §3.1.1.2 (there is no Aborted/Deleted)."""

    STARTED = "Started"
    ADDED = "Added"
    CREATION_IN_PROGRESS = "CreationInProgress"
    COMMITTED = "Committed"
    EXPOSED = "Exposed"
    RECOVERED = "Recovered"


class Call(enum.StrEnum):
    """The calls whose rules depend on the set's state."""

    ADD = "add"
    PREPARE = "prepare"
    COMMIT = "commit"
    EXPOSE = "expose"
    RECOVERY_COMPLETE = "recovery_complete"
    ABORT = "abort"
    GET_SHARE_MAPPING = "get_share_mapping"
    DELETE_SHARE_MAPPING = "delete_share_mapping"


ALL = frozenset(Status)
DONE = frozenset({Status.COMMITTED, Status.EXPOSED, Status.RECOVERED})  # snapshots exist


@dataclass(frozen=True)
class Reading:
    """One reading of the protocol (a :class:`Mode`)."""

    #: call -> the states in which it proceeds (else ``wrong_state``'s code)
    allowed: Mapping[Call, frozenset[Status]]
    #: call -> the code for a state not in ``allowed`` (default FSRVP_E_BAD_STATE)
    wrong_state: Mapping[Call, int]
    #: states in which Abort answers ZERO and does nothing (decisions row 7)
    abort_noop: frozenset[Status]
    #: states that block StartShadowCopySet and die on timer expiry (row 6)
    blocking: frozenset[Status]
    unknown_set: int  # row 3 (DeleteShareMapping: always FSRVP_E_OBJECT_NOT_FOUND)
    unknown_copy_on_delete: int  # row 4: DeleteShareMapping's unknown copy or share
    bad_context: int  # row 5
    missing_share: int  # IsPathSupported / IsPathShadowCopied on a share that does not exist

    def code_for_state(self, call: Call) -> int:
        return self.wrong_state.get(call, HResult.FSRVP_E_BAD_STATE)


_COMMON: dict[Call, frozenset[Status]] = {
    Call.ADD: frozenset({Status.STARTED, Status.ADDED}),
    Call.PREPARE: frozenset({Status.ADDED}),
    Call.COMMIT: frozenset({Status.ADDED, Status.CREATION_IN_PROGRESS}),
    Call.EXPOSE: frozenset({Status.COMMITTED}),
    Call.RECOVERY_COMPLETE: frozenset({Status.EXPOSED}),
    Call.ABORT: ALL,
    Call.GET_SHARE_MAPPING: frozenset({Status.EXPOSED}),
    Call.DELETE_SHARE_MAPPING: frozenset({Status.EXPOSED, Status.RECOVERED}),
}

READINGS: dict[Mode, Reading] = {
    Mode.SPEC: Reading(
        allowed=_COMMON,
        wrong_state={},
        abort_noop=frozenset(),
        blocking=ALL - {Status.RECOVERED},
        unknown_set=HResult.FSRVP_E_SHADOWCOPYSET_ID_MISMATCH,
        unknown_copy_on_delete=HResult.FSRVP_E_OBJECT_NOT_FOUND,
        bad_context=HResult.FSRVP_E_UNSUPPORTED_CONTEXT,
        missing_share=HResult.FSRVP_E_OBJECT_NOT_FOUND,
    ),
    Mode.SAMBA: Reading(
        allowed={
            **_COMMON,
            Call.COMMIT: frozenset({Status.ADDED}),
            Call.ABORT: frozenset({Status.STARTED, Status.ADDED}),
            Call.GET_SHARE_MAPPING: frozenset({Status.EXPOSED, Status.RECOVERED}),
        },
        wrong_state={Call.GET_SHARE_MAPPING: HResult.VSS_E_INVALID_XML_DOCUMENT},
        abort_noop=DONE,
        blocking=ALL - {Status.EXPOSED, Status.RECOVERED},
        unknown_set=HResult.E_INVALIDARG,
        unknown_copy_on_delete=HResult.E_INVALIDARG,
        bad_context=HResult.E_INVALIDARG,
        missing_share=HResult.E_INVALIDARG,
    ),
}
