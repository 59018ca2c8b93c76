"""How ``remotevss shadow`` shows shadow copy sets: DiskShadow-like text, or JSON.

Why apart from the commands: ``create``, ``expose`` and ``list`` print sets
the same way, and the text layout and the JSON keys are a contract with
scripts and people (docs/client.md); one module owns both.

Rules: with ``--json`` one document per command (:meth:`Session.emit`) and no
text; times are UTC; a share is shown without its trailing backslash.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from remotevss.client.state import CopyStatus, SetRecord, SetStatus
from remotevss.fsrvp import filetime
from remotevss.fsrvp.contexts import attribute_names
from remotevss.fsrvp.contexts import display_name as context_name

if TYPE_CHECKING:
    from remotevss.client.cli.session import Session


def print_sets(
    session: Session,
    records: Sequence[SetRecord],
    *,
    title: str = "",
    stale: list[dict[str, str]] | None = None,
    unverified: list[dict[str, str]] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> None:
    """The sets as one JSON document, or as text ending in a count line."""
    doc: dict[str, Any] = {"sets": [set_json(r) for r in records]}
    if stale is not None:
        doc["stale"] = stale
    if unverified is not None:
        doc["unverified"] = unverified  # the server has the set but would not map it
    if errors is not None:
        doc["errors"] = errors
    session.emit(doc)
    if session.settings.json:
        return
    groups: dict[UUID, int] = {}
    for r in records:
        groups[r.client_set_id] = groups.get(r.client_set_id, 0) + 1
    unchecked = {u["copy_id"]: u["reason"] for u in unverified or []}
    count = 0
    for r in records:
        session.say(format_set(r, multi=groups[r.client_set_id] > 1, unverified=unchecked))
        count += len(r.copies)
    what = f"{title} " if title else "listed "
    session.say(f"Number of shadow copies {what.strip()}: {count}")


def _ts(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _filetime_text(ft: int | None) -> str:
    dt = filetime.to_datetime(ft)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "-"


def _filetime_iso(ft: int | None) -> str | None:
    dt = filetime.to_datetime(ft)
    return dt.isoformat() if dt else None


def format_set(r: SetRecord, multi: bool = False, unverified: dict[str, str] | None = None) -> str:
    """One set as DiskShadow's ``list shadows`` shows it (``multi``: its creation
    spans servers, so the client set id is shown too; ``unverified``: copy id ->
    why the server could not confirm that copy, shown with it)."""
    lines = [f"* Shadow copy set ID = {{{r.set_id}}}"]
    where = r.server + (f" port {r.port}" if r.port != 445 else "")
    if r.owner and r.owner != r.server:
        where += f" (owner {r.owner})"
    lines.append(f"    - Server:           {where}")
    if multi:
        lines.append(f"    - Creation:         {{{r.client_set_id}}} (one set per server)")
    lines.append(f"    - Context:          {context_name(r.context)} (0x{r.context:08X})")
    lines.append(f"    - Status:           {r.status}{f' ({r.note})' if r.note else ''}")
    lines.append(f"    - Recorded:         {_ts(r.created)}")
    words = attribute_names(r.context)
    if r.status == SetStatus.RECOVERED and "Writable" in words:
        # RecoveryComplete seals a writable copy: say what it is now
        words[words.index("Writable")] = "Read-only (sealed; created Writable)"
    attrs = " ".join(words)
    for c in r.copies:
        lines.append(f"  * Shadow copy ID = {{{c.copy_id}}}")
        lines.append(f"      - Original share:  {c.share_unc.rstrip(chr(92))}")
        lines.append(f"      - Snapshot share:  {c.exposed_unc or 'not exposed'}")
        lines.append(f"      - Creation time:   {_filetime_text(c.creation_time)}")
        lines.append(f"      - Attributes:      {attrs}")
        if c.status != CopyStatus.OK:
            lines.append(f"      - Status:          {c.status}")
        why = (unverified or {}).get(str(c.copy_id))
        if why:
            lines.append(f"      - Verified:        no ({why}; showing what was recorded)")
    return "\n".join(lines)


def set_json(r: SetRecord) -> dict[str, Any]:
    """One set as the JSON object of ``--json`` output (docs/client.md)."""
    return {
        "set_id": str(r.set_id),
        "client_set_id": str(r.client_set_id),
        "server": r.server,
        "port": r.port,
        "owner": r.owner,
        "context": context_name(r.context),
        "context_value": r.context,
        "writable": r.writable,
        "status": r.status,
        "note": r.note,
        "recorded": datetime.fromtimestamp(r.created, UTC).isoformat(),
        "attributes": attribute_names(r.context),
        "copies": [
            {
                "copy_id": str(c.copy_id),
                "original_share": c.share_unc.rstrip("\\"),
                "snapshot_share": c.exposed_unc,
                "exposed_name": c.exposed_name,
                "creation_time": _filetime_iso(c.creation_time),
                "status": c.status,
            }
            for c in r.copies
        ],
    }
