"""FSRVP context names: the one table every part of remotevss names contexts from.

Why one table: the client's commands and scripts, the agent's configuration
(``[gc] max_age_by_context``), its GC events and the state machine's check of
SetContext values must agree on which contexts exist and what they are called.

Rules:

* Two spellings name each context: hyphenated (``file-share-backup``: the
  client's ``--context``, scripts, ``list`` output) and underscored
  (``file_share_backup``: TOML keys, agent events).  Input in either spelling
  and in any case is accepted by :func:`context_from_name`; each consumer
  writes its own spelling, as :func:`context_name` is told.
* A context value may carry ATTR_AUTO_RECOVERY or ATTR_NO_AUTO_RECOVERY
  (MS-FSRVP 2.2.2.2); names ignore those two bits.
* Unknown values have no name (None): the caller decides how to show them.
"""

from __future__ import annotations

from remotevss.fsrvp.constants import (
    CTX_APP_ROLLBACK,
    CTX_BACKUP,
    CTX_FILE_SHARE_BACKUP,
    CTX_NAS_ROLLBACK,
    Attr,
)

#: Base context value -> hyphenated name, in the order help texts list them.
_TABLE: dict[int, str] = {
    CTX_BACKUP: "backup",
    CTX_FILE_SHARE_BACKUP: "file-share-backup",
    CTX_NAS_ROLLBACK: "nas-rollback",
    CTX_APP_ROLLBACK: "app-rollback",
}
_RECOVERY_BITS = Attr.ATTR_AUTO_RECOVERY | Attr.ATTR_NO_AUTO_RECOVERY

#: The four base context values a SetContext may name (before recovery bits).
BASE_CONTEXTS: frozenset[int] = frozenset(_TABLE)
#: Hyphenated names (client command line, scripts, client output).
NAMES: tuple[str, ...] = tuple(_TABLE.values())
#: Underscored names (agent configuration keys and events).
CONFIG_NAMES: tuple[str, ...] = tuple(n.replace("-", "_") for n in NAMES)

#: Hyphenated name -> base value.
BY_NAME: dict[str, int] = {n: v for v, n in _TABLE.items()}
_ANY_SPELLING: dict[str, int] = {**BY_NAME, **{n.replace("-", "_"): v for n, v in BY_NAME.items()}}


def base_context(value: int) -> int:
    """``value`` without the recovery bits."""
    return value & ~_RECOVERY_BITS


def context_from_name(name: str) -> int | None:
    """The base value a name in either spelling (any case) stands for, or None."""
    return _ANY_SPELLING.get(name.lower())


def canonical_name(name: str) -> str:
    """``name`` in the hyphenated spelling if it names a context, else unchanged."""
    value = context_from_name(name)
    return name if value is None else _TABLE[value]


def context_name(value: int, *, underscored: bool = False) -> str | None:
    """The name of ``value``'s base context (recovery bits ignored), or None if unknown."""
    name = _TABLE.get(base_context(value))
    if name is not None and underscored:
        return name.replace("-", "_")
    return name


def display_name(value: int) -> str:
    """The hyphenated name (recovery bits ignored), or the value in hex: what the
    client shows for a set's context."""
    return context_name(value) or f"0x{value:08X}"


def attribute_names(context: int) -> list[str]:
    """DiskShadow-style attribute words for a set's context."""
    words = []
    if context & Attr.ATTR_PERSISTENT:
        words.append("Persistent")
    words.append("No_Auto_Release" if context & Attr.ATTR_NO_AUTO_RELEASE else "Auto_Release")
    if context & Attr.ATTR_NO_WRITERS:
        words.append("No_Writers")
    if context & Attr.ATTR_NO_AUTO_RECOVERY:
        words.append("No_Auto_Recovery")
    words.append("Writable" if context & Attr.ATTR_AUTO_RECOVERY else "Read-only")
    return words


__all__ = [
    "attribute_names",
    "display_name",
    "BASE_CONTEXTS",
    "BY_NAME",
    "CONFIG_NAMES",
    "NAMES",
    "base_context",
    "canonical_name",
    "context_from_name",
    "context_name",
]
