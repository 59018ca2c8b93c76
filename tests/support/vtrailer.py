"""MS-RPCE 2.2.2.13 verification trailer, as Windows clients append it to request stubs.

Windows sends it on authenticated calls (bitmask, presentation context,
header2); the server checks it against the call (remotevss.dcerpc.vtrailer,
whose spec constants this builder shares).
"""

from __future__ import annotations

import struct
import uuid

from remotevss.dcerpc.pdu import NDR20 as _NDR20
from remotevss.dcerpc.vtrailer import CMD_BITMASK_1, CMD_END, CMD_HEADER2, CMD_PCONTEXT
from remotevss.dcerpc.vtrailer import MAGIC as SIGNATURE

NDR20 = _NDR20.uuid


def verification_trailer(
    stub: bytes, *, iface: uuid.UUID, version: tuple[int, int], call_id: int, context_id: int,
    opnum: int, header_signing: bool = False, ptype: int = 0,
) -> bytes:
    """``stub`` padded to 4, then the trailer Windows sends (what Samba's ndrdump parses);
    ``header_signing``: the bind offered PFC_SUPPORT_HEADER_SIGN (bitmask1 bit 0)."""
    pcontext = (
        iface.bytes_le + struct.pack("<HH", *version) + NDR20.bytes_le + struct.pack("<L", 2)
    )
    header2 = struct.pack("<B3x4sLHH", ptype, b"\x10\0\0\0", call_id, context_id, opnum)
    body = (
        struct.pack("<HHL", CMD_BITMASK_1, 4, int(header_signing))
        + struct.pack("<HH", CMD_PCONTEXT, len(pcontext)) + pcontext
        + struct.pack("<HH", CMD_HEADER2 | CMD_END, len(header2)) + header2
    )
    return stub + bytes(-len(stub) % 4) + SIGNATURE + body
