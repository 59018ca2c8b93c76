"""One ``remotevss shadow`` invocation (or one script): its resources and its output.

Why a class: a script runs many commands with one set of options, one
password prompt and one open client table; :class:`Session` holds them, and
the commands (:mod:`.commands`) and the renderer (:mod:`.render`) write
through it, so ``--json`` and the script's one-document-per-line rule are
decided in one place.  ``remotevss backup`` uses it for its credentials.

Rules: nothing here connects; credentials are built on first use (a command
that needs none never prompts); the client table is opened on first use and
closed by :meth:`Session.close`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

from remotevss.client.cli.credentials import build_credentials
from remotevss.client.cli.parser import Settings
from remotevss.client.errors import UnknownId, UsageError

if TYPE_CHECKING:
    from remotevss.client.connection import ConnectOptions, Credentials
    from remotevss.client.shadow import Connector, ShadowCopySet
    from remotevss.client.state import ClientState, CopyRecord, SetRecord

_GUID = re.compile(
    r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$"
)


def parse_id(text: str) -> UUID:
    """A set or copy id as the user typed it (braces optional)."""
    m = _GUID.match(text.strip())
    if not m:
        raise UsageError(f"not a GUID: {text!r}")
    return UUID(m.group(1))


class Session:
    """One invocation (or one script): options, lazily built credentials, the table."""

    def __init__(
        self,
        settings: Settings,
        out: TextIO | None = None,
        err: TextIO | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.settings = settings
        self.connector = connector  # None: real SMB connections (tests pass fakes)
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.script = False  # JSON documents one per line
        self._creds: Credentials | None = None
        self._state: ClientState | None = None

    # ------------------------------------------------------------- resources
    @property
    def state(self) -> ClientState:
        if self._state is None:
            from remotevss.client.state import ClientState

            self._state = ClientState(self.settings.state)
        return self._state

    def state_path(self) -> str:
        """The client table's path, for messages (without opening it)."""
        if self._state is not None:
            return str(self._state.path)
        from remotevss.client.state import default_state_path

        return str(self.settings.state or default_state_path())

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

    def options(self) -> ConnectOptions:
        from remotevss.client.connection import ConnectOptions

        s = self.settings
        try:
            return ConnectOptions(
                port=s.port,
                auth_level=s.auth_level,  # type: ignore[arg-type]
                call_timeout=s.timeout,
                connect_timeout=s.connect_timeout,
                require_smb3=not s.allow_smb2,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def credentials(self) -> Credentials:
        if self._creds is None:
            self._creds = build_credentials(self.settings)
        return self._creds

    # ------------------------------------------------------------- output
    def emit(self, doc: dict[str, Any]) -> None:
        if self.settings.json:
            print(json.dumps(doc, indent=None if self.script else 2), file=self.out)

    def say(self, text: str) -> None:
        if not self.settings.json:
            print(text, file=self.out)

    def note(self, text: str) -> None:
        """Messages about what happened beside the result (stale entries ...): stderr."""
        print(text, file=self.err)

    # ------------------------------------------------------------- lookups
    def find_sets(self, ids: Iterable[str]) -> list[tuple[SetRecord, CopyRecord | None]]:
        """(set, copy-or-None) per id, in order, sets not repeated; UnknownId if one is unknown."""
        found: list[tuple[SetRecord, CopyRecord | None]] = []
        seen: set[tuple[UUID, str, UUID | None]] = set()
        for text in ids:
            ident = parse_id(text)
            sets, copy = self.state.find(ident)
            if not sets:
                raise UnknownId(
                    f"no shadow copy set or shadow copy {{{ident}}} in the client table "
                    f"{self.state.path}"
                )
            for rec in sets:
                key = (rec.set_id, rec.server, copy.copy_id if copy else None)
                if key not in seen:
                    seen.add(key)
                    found.append((rec, copy))
        return found

    def resume(self, rec: SetRecord) -> ShadowCopySet:
        from remotevss.client.shadow import SequenceOptions, ShadowCopySet

        s = ShadowCopySet.resume(
            rec,
            self.credentials(),
            self.options(),
            state=self.state,
            timeouts=SequenceOptions(),
            connector=self.connector,
        )
        s.settings.follow_owner = self.settings.follow_owner
        return s
