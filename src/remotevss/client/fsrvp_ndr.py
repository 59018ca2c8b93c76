"""impacket's view of the 13 FSRVP calls: NDRCALL classes for impacket clients.

Why here and not in fsrvp/: the agent and the CLI's start-up never need
impacket (fsrvp/calls.py is the strict codec everything in remotevss uses);
impacket clients (client/connection.py, client/local.py, the tests) do.  The
classes follow impacket's per-interface style: ``dce.request(FssSetContext(...))``
finds ``FssSetContextResponse`` and raises :class:`DCERPCSessionError` on a
non-zero return.  They carry an ``Fss`` prefix (Samba's ``fss_`` function
names) because impacket looks the response class up as *request class name*
+ ``"Response"`` and the typed API owns the plain names.
tests/unit/test_fsrvp_calls.py keeps them identical to fsrvp/calls.py's codec.
"""

# mypy: allow-subclassing-any
# (impacket ships no type information; its NDR base classes are Any to mypy.)

from __future__ import annotations

from typing import Any

from impacket.dcerpc.v5.dtypes import DWORD, GUID, LONG, LONGLONG, LPWSTR, ULONG, WSTR
from impacket.dcerpc.v5.ndr import NDRCALL, NDRPOINTER, NDRSTRUCT, NDRUNION
from impacket.dcerpc.v5.rpcrt import DCERPCException
from impacket.uuid import uuidtup_to_bin

from remotevss.fsrvp.constants import INTERFACE_UUID, INTERFACE_VERSION, hresult_name

MSRPC_UUID_FSRVP = uuidtup_to_bin((str(INTERFACE_UUID), "{}.{}".format(*INTERFACE_VERSION)))


class DCERPCSessionError(DCERPCException):
    """What impacket's ``dce.request`` raises for a non-zero FSRVP return code."""

    def __str__(self) -> str:
        return f"FSRVP SessionError: {hresult_name(int(self.error_code or 0))}"


class FSSAGENT_SHARE_MAPPING_1(NDRSTRUCT):
    structure = (
        ("ShadowCopySetId", GUID),
        ("ShadowCopyId", GUID),
        ("ShareNameUNC", LPWSTR),
        ("ShadowCopyShareName", LPWSTR),
        ("CreationTimestamp", LONGLONG),
    )


class PFSSAGENT_SHARE_MAPPING_1(NDRPOINTER):
    referent = (("Data", FSSAGENT_SHARE_MAPPING_1),)


class FSSAGENT_SHARE_MAPPING(NDRUNION):
    """[switch_type(unsigned long)]; impacket cannot marshal the empty [default] arm."""

    commonHdr = (("tag", ULONG),)
    union = {1: ("ShareMapping1", PFSSAGENT_SHARE_MAPPING_1)}


class FssGetSupportedVersion(NDRCALL):
    opnum = 0
    structure = ()


class FssGetSupportedVersionResponse(NDRCALL):
    structure = (("MinVersion", DWORD), ("MaxVersion", DWORD), ("ErrorCode", ULONG))


class FssSetContext(NDRCALL):
    opnum = 1
    structure = (("Context", ULONG),)


class FssSetContextResponse(NDRCALL):
    structure = (("ErrorCode", ULONG),)


class FssStartShadowCopySet(NDRCALL):
    opnum = 2
    structure = (("ClientShadowCopySetId", GUID),)


class FssStartShadowCopySetResponse(NDRCALL):
    structure = (("pShadowCopySetId", GUID), ("ErrorCode", ULONG))


class FssAddToShadowCopySet(NDRCALL):
    opnum = 3
    structure = (("ClientShadowCopyId", GUID), ("ShadowCopySetId", GUID), ("ShareName", WSTR))


class FssAddToShadowCopySetResponse(NDRCALL):
    structure = (("pShadowCopyId", GUID), ("ErrorCode", ULONG))


class FssCommitShadowCopySet(NDRCALL):
    opnum = 4
    structure = (("ShadowCopySetId", GUID), ("TimeOutInMilliseconds", ULONG))


class FssCommitShadowCopySetResponse(NDRCALL):
    structure = (("ErrorCode", ULONG),)


class FssExposeShadowCopySet(NDRCALL):
    opnum = 5
    structure = (("ShadowCopySetId", GUID), ("TimeOutInMilliseconds", ULONG))


class FssExposeShadowCopySetResponse(NDRCALL):
    structure = (("ErrorCode", ULONG),)


class FssRecoveryCompleteShadowCopySet(NDRCALL):
    opnum = 6
    structure = (("ShadowCopySetId", GUID),)


class FssRecoveryCompleteShadowCopySetResponse(NDRCALL):
    structure = (("ErrorCode", ULONG),)


class FssAbortShadowCopySet(NDRCALL):
    opnum = 7
    structure = (("ShadowCopySetId", GUID),)


class FssAbortShadowCopySetResponse(NDRCALL):
    structure = (("ErrorCode", ULONG),)


class FssIsPathSupported(NDRCALL):
    opnum = 8
    structure = (("ShareName", WSTR),)


class FssIsPathSupportedResponse(NDRCALL):
    structure = (
        ("SupportedByThisProvider", ULONG),  # BOOL
        ("OwnerMachineName", LPWSTR),
        ("ErrorCode", ULONG),
    )


class FssIsPathShadowCopied(NDRCALL):
    opnum = 9
    structure = (("ShareName", WSTR),)


class FssIsPathShadowCopiedResponse(NDRCALL):
    structure = (
        ("ShadowCopyPresent", ULONG),  # BOOL
        ("ShadowCopyCompatibility", LONG),
        ("ErrorCode", ULONG),
    )


class FssGetShareMapping(NDRCALL):
    opnum = 10
    structure = (
        ("ShadowCopyId", GUID),
        ("ShadowCopySetId", GUID),
        ("ShareName", WSTR),
        ("Level", DWORD),
    )


class FssGetShareMappingResponse(NDRCALL):
    structure = (("ShareMapping", FSSAGENT_SHARE_MAPPING), ("ErrorCode", ULONG))


class FssDeleteShareMapping(NDRCALL):
    opnum = 11
    structure = (("ShadowCopySetId", GUID), ("ShadowCopyId", GUID), ("ShareName", WSTR))


class FssDeleteShareMappingResponse(NDRCALL):
    structure = (("ErrorCode", ULONG),)


class FssPrepareShadowCopySet(NDRCALL):
    opnum = 12
    structure = (("ShadowCopySetId", GUID), ("TimeOutInMilliseconds", ULONG))


class FssPrepareShadowCopySetResponse(NDRCALL):
    structure = (("ErrorCode", ULONG),)


#: opnum -> (impacket request class, impacket response class)
NDR_CALLS: dict[int, tuple[type[Any], type[Any]]] = {
    c.opnum: (c, globals()[c.__name__ + "Response"])
    for c in (
        FssGetSupportedVersion,
        FssSetContext,
        FssStartShadowCopySet,
        FssAddToShadowCopySet,
        FssCommitShadowCopySet,
        FssExposeShadowCopySet,
        FssRecoveryCompleteShadowCopySet,
        FssAbortShadowCopySet,
        FssIsPathSupported,
        FssIsPathShadowCopied,
        FssGetShareMapping,
        FssDeleteShareMapping,
        FssPrepareShadowCopySet,
    )
}
