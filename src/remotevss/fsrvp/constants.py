"""MS-FSRVP numbers in one place: interface identity, opnums, flags, return codes.

Why one module: the server, the client, the state machine and the tests must
agree on every value, and MS-FSRVP (sections 2.1-2.2) is the only
source.  Values are exact; comments say where sources disagree.
"""

from __future__ import annotations

import uuid
from enum import IntEnum, IntFlag

# --------------------------------------------------------------- identity
INTERFACE_UUID: uuid.UUID = uuid.UUID("a8e0653c-2744-4389-a61d-7373df8b2292")
#: 1.0 as in the IDL and every implementation ([SPEC §2.1] says 3.0; that is a typo).
INTERFACE_VERSION: tuple[int, int] = (1, 0)
#: Opened on IPC$ as ``\PIPE\FssagentRpc``; ncacn_np is the only protocol sequence.
PIPE_NAME = "FssagentRpc"

#: Transfer syntaxes the DCE/RPC engine meets in binds.  We speak NDR20 only.
NDR20_UUID: uuid.UUID = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860")
NDR20_VERSION = 2
NDR64_UUID: uuid.UUID = uuid.UUID("71710533-beba-4937-8319-b5dbef9ccc36")
NDR64_VERSION = 1

#: The only protocol version (GetSupportedVersion min = max = 1).
FSRVP_RPC_VERSION_1 = 0x00000001


class Opnum(IntEnum):
    """The 13 methods (there is no opnum 13).  Prepare came last, hence 12."""

    GET_SUPPORTED_VERSION = 0
    SET_CONTEXT = 1
    START_SHADOW_COPY_SET = 2
    ADD_TO_SHADOW_COPY_SET = 3
    COMMIT_SHADOW_COPY_SET = 4
    EXPOSE_SHADOW_COPY_SET = 5
    RECOVERY_COMPLETE_SHADOW_COPY_SET = 6
    ABORT_SHADOW_COPY_SET = 7
    IS_PATH_SUPPORTED = 8
    IS_PATH_SHADOW_COPIED = 9
    GET_SHARE_MAPPING = 10
    DELETE_SHARE_MAPPING = 11
    PREPARE_SHADOW_COPY_SET = 12


class Attr(IntFlag):
    """SHADOW_COPY_ATTRIBUTES ([SPEC §2.2.2.1]); contexts are combinations of these."""

    ATTR_PERSISTENT = 0x00000001
    ATTR_NO_AUTO_RECOVERY = 0x00000002
    ATTR_NO_AUTO_RELEASE = 0x00000008
    ATTR_NO_WRITERS = 0x00000010
    ATTR_AUTO_RECOVERY = 0x00400000
    #: Not in [SPEC]; Samba's IDL and vss.h (VSS_VOLSNAP_ATTR_FILE_SHARE).
    ATTR_FILE_SHARE = 0x04000000


# CONTEXT_VALUES ([SPEC §2.2.2.2]); ATTR_AUTO_RECOVERY or ATTR_NO_AUTO_RECOVERY may be OR-ed in.
CTX_BACKUP = 0x00000000
CTX_FILE_SHARE_BACKUP = 0x00000010
CTX_NAS_ROLLBACK = 0x00000019
CTX_APP_ROLLBACK = 0x00000009

# SHADOW_COPY_COMPATIBILITY_VALUES ([SPEC §2.2.2.3]), returned by IsPathShadowCopied.
DISABLE_DEFRAG = 0x00000001
DISABLE_CONTENTINDEX = 0x00000002


class HResult(IntEnum):
    """Every return code the protocol uses (MS-FSRVP 2.2.4), as unsigned 32-bit values."""

    ZERO = 0x00000000
    FSRVP_E_BAD_STATE = 0x80042301
    FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS = 0x80042316
    FSRVP_E_NOT_SUPPORTED = 0x8004230C
    FSRVP_E_WAIT_TIMEOUT = 0x00000102
    FSRVP_E_WAIT_FAILED = 0xFFFFFFFF
    FSRVP_E_OBJECT_ALREADY_EXISTS = 0x8004230D
    FSRVP_E_OBJECT_NOT_FOUND = 0x80042308
    FSRVP_E_UNSUPPORTED_CONTEXT = 0x8004231B
    FSRVP_E_SHADOWCOPYSET_ID_MISMATCH = 0x80042501
    #: Commit timed out ([SPEC §3.1.4.5]; missing from the §2.2.4 list).
    FSSAGENT_E_TIMEOUT = 0x80042500
    E_ACCESSDENIED = 0x80070005
    E_INVALIDARG = 0x80070057
    E_OUTOFMEMORY = 0x8007000E
    E_FAIL = 0x80004005
    #: HRESULT_FROM_WIN32(ERROR_WRITE_PROTECT): the volume is read-only (EROFS).
    E_WRITE_PROTECT = 0x80070013
    #: Samba: "wire, not documented" (VSS_E_UNEXPECTED in vss.h).
    FSRVP_E_BAD_ID = 0x80042302
    #: Windows 2012's GetShareMapping before Exposed (<10>); Samba returns it too.
    VSS_E_INVALID_XML_DOCUMENT = 0x80042311
    #: Not an FSRVP code: VSS's "insufficient storage" (vss.h), which DiskShadow explains.
    #: Commit answers it when the shadow storage limit refuses a snapshot (decisions.md).
    VSS_E_INSUFFICIENT_STORAGE = 0x8004231F


_NAMES: dict[int, str] = {int(h): h.name for h in HResult}


def hresult_name(code: int) -> str:
    """The symbolic name of a return code, or ``0x%08X`` for one we do not know."""
    code &= 0xFFFFFFFF  # a negative int32 from a signed reader names the same code
    name = _NAMES.get(code)
    return name if name is not None else f"0x{code:08X}"
