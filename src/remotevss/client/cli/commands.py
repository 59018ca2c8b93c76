"""The ``remotevss shadow`` commands: add, create, list, expose, recover, delete, query.

Each is a function of a :class:`~remotevss.client.cli.session.Session`, so the
command line (:func:`dispatch`) and script mode (:mod:`.script`) run the same
code.  What goes over the wire is :mod:`remotevss.client.shadow`'s business;
here: which sets a command means, what it prints, and its exit status.

Rules: :mod:`remotevss.client.shadow` (and with it impacket) is imported
inside the functions, when a command runs, never at start-up; an error that
ends a command is raised as a :class:`~remotevss.client.errors.ClientError`
(the caller prints it and returns its exit code); messages beside the result
go to stderr (``session.note``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from remotevss.client.cli.render import print_sets
from remotevss.client.cli.session import Session, parse_id
from remotevss.client.errors import EXIT_OK, EXIT_USAGE, BadState, ClientError, UsageError
from remotevss.client.state import CopyRecord, SetRecord, SetStatus
from remotevss.client.unc import parse_unc

if TYPE_CHECKING:
    from remotevss.client.shadow import ShadowCopySet


def add(session: Session, uncs: Sequence[str], check: bool = True) -> int:
    """Remember shares for the next ``create`` (after IsPathSupported unless not ``check``)."""
    from remotevss.client.shadow import query_path

    parsed = [parse_unc(u) for u in uncs]
    session.state  # noqa: B018 - open (and check) the table before anything is sent
    for u in parsed:
        if check:
            q = query_path(u, session.credentials(), session.options(), connector=session.connector)
            if not q.supported:
                raise UsageError(f"{u.display}: the server cannot shadow-copy this share")
        new = session.state.add_pending(u.wire)
        session.say(f"{'added' if new else 'already added'}: {u.display}")
    pending = session.state.pending()
    session.say(f"{len(pending)} share(s) pending; `remotevss shadow create` shadow-copies them")
    session.emit({"pending": [p.rstrip("\\") for p in pending]})
    return EXIT_OK


def create(
    session: Session,
    uncs: Sequence[str],
    *,
    context: str = "backup",
    writable: bool = False,
    expose: bool = True,
    recover: bool | None = None,
    use_pending: bool = True,
) -> list[ShadowCopySet]:
    """Shadow-copy ``uncs`` and, with ``use_pending``, the remembered shares."""
    from remotevss.client.shadow import CreateRequest, create_shadow_copies

    pending = session.state.pending() if use_pending else []
    given = [parse_unc(u) for u in uncs]
    keys = {u.key for u in given}
    all_uncs = given + [u for u in map(parse_unc, pending) if u.key not in keys]
    if not all_uncs:
        raise UsageError("nothing to create: give shares, or `remotevss shadow add` them first")
    request = CreateRequest(
        all_uncs,
        context=context,
        writable=writable,
        expose=expose,
        recover=recover,
        follow_owner=session.settings.follow_owner,
        resolve=session.settings.resolve,
    )
    sets = create_shadow_copies(
        request,
        session.credentials(),
        session.options(),
        state=session.state,
        connector=session.connector,
    )
    if use_pending and pending:
        session.state.clear_pending()
    records = [s.record() for s in sets]
    print_sets(session, records, title="created")
    if not expose:
        session.note(
            "note: the set is committed but not exposed; run `remotevss shadow expose "
            "ID` within the server's message sequence timer (180 s)"
        )
    elif writable and recover is not True:
        session.note(
            "note: writable set left Exposed; run `remotevss shadow recover ID` when "
            "done (a spec server drops an unrecovered set after its timer)"
        )
    return sets


def list_sets(session: Session, ids: Sequence[str], check: bool = True, prune: bool = False) -> int:
    """The client table (or the sets ``ids`` name), checked against the servers."""
    records = [rec for rec, _ in session.find_sets(ids)] if ids else session.state.sets()
    checked = _Checked()
    if check and records:
        _check_sets(session, records, prune, checked)
        if prune:
            records = [
                r
                for r in session.state.sets()
                if not ids or r.set_id in {x.set_id for x in records}
            ]
    print_sets(
        session,
        records,
        stale=checked.stale,
        errors=checked.errors,
        unverified=checked.unverified,
    )
    return checked.status


@dataclass
class _Checked:
    """What ``list`` learnt from the servers (its JSON keys and its exit status)."""

    status: int = EXIT_OK
    errors: list[dict[str, str]] = field(default_factory=list)
    stale: list[dict[str, str]] = field(default_factory=list)
    unverified: list[dict[str, str]] = field(default_factory=list)


def _check_sets(session: Session, records: Sequence[SetRecord], prune: bool, out: _Checked) -> None:
    """Ask each owner about its sets, one connection per (owner, port)."""
    from remotevss.client.shadow import _default_connector, check_set, describe_error

    connect = session.connector or _default_connector
    by_owner: dict[tuple[str, int], list[SetRecord]] = {}
    for rec in records:
        by_owner.setdefault((rec.owner, rec.port), []).append(rec)
    for (owner, port), recs in by_owner.items():
        opts = dataclasses.replace(session.options(), port=port)
        try:
            conn = connect(owner, session.credentials(), opts)
        except ClientError as exc:
            out.status = out.status or exc.exit_code
            out.errors.append({"server": owner, "error": describe_error(exc)})
            session.note(f"cannot check {owner}: {describe_error(exc)}")
            continue
        try:
            for rec in recs:
                try:
                    res = check_set(rec, state=session.state, conn=conn)
                except ClientError as exc:
                    out.status = out.status or exc.exit_code
                    out.errors.append({"server": owner, "error": describe_error(exc)})
                    session.note(f"cannot check set {{{rec.set_id}}}: {describe_error(exc)}")
                    break
                if res.recovered_by_server:
                    session.note(
                        f"set {{{rec.set_id}}} on {rec.server} is no longer exposed on the "
                        f"server: {rec.note}; recorded as recovered"
                        + (" (its copies are read-only now)" if rec.writable else "")
                    )
                for c, why in res.unknown:
                    out.unverified.append(
                        {"copy_id": str(c.copy_id), "set_id": str(rec.set_id), "reason": why}
                    )
                for c, why in res.stale:
                    out.stale.append(
                        {
                            "copy_id": str(c.copy_id),
                            "set_id": str(rec.set_id),
                            "share": c.share_unc.rstrip("\\"),
                            "reason": why,
                        }
                    )
                    session.note(
                        f"shadow copy {{{c.copy_id}}} of {c.share_unc.rstrip(chr(92))} "
                        f"is no longer on {rec.server} ({why}); "
                        + (
                            "removed from the client table"
                            if prune
                            else "marked stale (`list --prune` or `delete` removes it)"
                        )
                    )
                    if prune:
                        session.state.remove_copy(c.copy_id, c.server)
        finally:
            conn.close()


def expose(session: Session, ids: Sequence[str], recover: bool | None = None) -> list[SetRecord]:
    """Expose committed sets; for exposed ones, read the mappings again."""
    done: list[SetRecord] = []
    for rec, _ in session.find_sets(ids):
        s = session.resume(rec)
        try:
            if rec.status == SetStatus.COMMITTED:
                s.expose(recover=recover)
                if s.found_ahead is not None:
                    session.note(
                        f"set {{{rec.set_id}}} was already exposed on the server "
                        "(the client table had it committed)"
                    )
            elif rec.status in (SetStatus.EXPOSED, SetStatus.RECOVERED):
                try:
                    s.refresh_mappings()
                except BadState as exc:
                    # MS-FSRVP 3.1.4.11: a server SHOULD refuse GetShareMapping once
                    # the set is Recovered (Samba allows it): show what we recorded.
                    # An exposed set refused so was recovered by the server itself.
                    if rec.status == SetStatus.EXPOSED:
                        s.mark_recovered_by_server(f"GetShareMapping: {exc.name}")
                    session.note(
                        f"set {{{rec.set_id}}} is recovered"
                        + (" (by the server)" if rec.status == SetStatus.EXPOSED else "")
                        + f"; the server no longer reports its mappings ({exc.name}): "
                        "showing the recorded ones"
                    )
            else:
                raise UsageError(
                    f"set {{{rec.set_id}}} is {rec.status}; only a committed set can be exposed"
                )
        finally:
            s.close()
        done.append(s.record())
    print_sets(session, done, title="exposed")
    return done


def recover(session: Session, ids: Sequence[str]) -> int:
    """RecoveryComplete on exposed sets (a recovered one is left as it is)."""
    done = []
    for rec, _ in session.find_sets(ids):
        if rec.status == SetStatus.RECOVERED:
            session.say(f"set {{{rec.set_id}}} is already recovered")
            done.append(
                {"set_id": str(rec.set_id), "status": SetStatus.RECOVERED, "changed": False}
            )
            continue
        if rec.status != SetStatus.EXPOSED:
            raise UsageError(f"set {{{rec.set_id}}} is {rec.status}; recover needs an exposed set")
        s = session.resume(rec)
        try:
            changed = s.recovery_complete()
        finally:
            s.close()
        if changed:
            session.say(f"set {{{rec.set_id}}} recovered (RecoveryComplete)")
        else:
            session.say(
                f"set {{{rec.set_id}}} is already recovered: the server recovered it itself"
                + (", its copies are read-only now" if rec.writable else "")
                + "; nothing to do"
            )
        done.append({"set_id": str(rec.set_id), "status": SetStatus.RECOVERED, "changed": changed})
    session.emit({"recovered": done})
    return EXIT_OK


#: Sets whose copies DeleteShareMapping removes one by one; the others are aborted whole.
_DELETABLE = (SetStatus.EXPOSED, SetStatus.RECOVERED, SetStatus.STALE)


def delete(
    session: Session,
    ids: Sequence[str],
    *,
    all_sets: bool = False,
    server: str | None = None,
    share: str | None = None,
    set_id: str | None = None,
    copy_id: str | None = None,
    records: Sequence[tuple[SetRecord, CopyRecord | None]] | None = None,
) -> int:
    """Delete (or abort) sets or single copies; ``--share`` names one we did not record."""
    from remotevss.client.shadow import describe_error

    if share is not None:
        targets = [_explicit_target(session, share, set_id, copy_id)]
        missing_ok = False
    else:
        if set_id or copy_id:
            raise UsageError("--set and --copy go with --share")
        if records is not None:
            targets = list(records)
        elif all_sets:
            if ids:
                raise UsageError("give ids or --all, not both")
            targets = [
                (r, None)
                for r in session.state.sets()
                if server is None or r.server == server.lower() or r.owner == server.lower()
            ]
        elif ids:
            targets = session.find_sets(ids)
        else:
            raise UsageError("delete what? give ids, --all, or --share with --set and --copy")
        missing_ok = True
    for rec, copy in targets:  # before anything is sent: abort would take the rest too
        if copy is not None and rec.status not in _DELETABLE and len(rec.copies) > 1:
            raise UsageError(
                f"shadow copy {{{copy.copy_id}}} is one of {len(rec.copies)} in set "
                f"{{{rec.set_id}}}, which is {rec.status}: FSRVP deletes a single shadow "
                f"copy only once its set is exposed; 'delete {rec.set_id}' aborts the "
                "whole set, or expose it first"
            )
    results: list[dict[str, str]] = []
    first_error: ClientError | None = None
    for rec, copy in targets:
        s = session.resume(rec)
        try:
            if rec.status not in _DELETABLE:
                if s.abort(missing_ok=missing_ok):
                    results.append({"set_id": str(rec.set_id), "outcome": "aborted"})
                    if s.found_ahead is not None:  # the table was behind the server
                        session.say(
                            f"aborted set {{{rec.set_id}}} (the table had it {rec.status}, "
                            f"the server had it {s.found_ahead}: "
                            f"{'exposed and ' if s.found_ahead == 'committed' else ''}deleted)"
                        )
                    else:
                        session.say(f"aborted set {{{rec.set_id}}} (it was {rec.status})")
                else:
                    results.append({"set_id": str(rec.set_id), "outcome": "already gone"})
                    session.note(
                        f"set {{{rec.set_id}}} ({rec.status}): already gone on the server; "
                        "removed from the client table"
                    )
                continue
            outcomes = s.delete([copy.copy_id] if copy else None, missing_ok=missing_ok)
        except ClientError as exc:
            first_error = first_error or exc
            if len(targets) == 1:
                continue
            session.note(
                f"cannot delete set {{{rec.set_id}}} on {rec.server}: {describe_error(exc)}"
            )
            continue
        finally:
            s.close()
        for o in outcomes:
            c = o.copy
            results.append(
                {
                    "set_id": str(rec.set_id),
                    "copy_id": str(c.copy_id),
                    "share": c.share_display,
                    "snapshot_share": c.exposed_unc or "",
                    "outcome": "deleted" if o.deleted else "already gone",
                }
            )
            if o.deleted:
                session.say(f"deleted shadow copy {{{c.copy_id}}} of {c.share_display}")
            else:
                session.note(
                    f"shadow copy {{{c.copy_id}}} of {c.share_display}: {o.detail}; "
                    "removed from the client table"
                )
    session.emit({"deleted": results})
    if first_error is not None:
        raise first_error
    return EXIT_OK


def _explicit_target(
    session: Session, share: str, set_id: str | None, copy_id: str | None
) -> tuple[SetRecord, CopyRecord | None]:
    """The set and copy ``delete --share --set --copy`` names.

    When the set is in the client table its own record is used (the copy added
    if the table lacks it), so deleting one copy leaves the set's other copies
    recorded; only a set the table does not know gets a one-copy stand-in.
    """
    if not set_id or not copy_id:
        raise UsageError("--share needs --set SET_ID and --copy COPY_ID")
    u = parse_unc(share)
    sid, cid = parse_id(set_id), parse_id(copy_id)
    recorded = [r for r in session.state.sets() if r.set_id == sid]
    rec = next((r for r in recorded if u.host in (r.server, r.owner)), None)
    if rec is None and len(recorded) == 1:
        rec = recorded[0]
    if rec is None:
        holders, found = session.state.find(cid)
        if found is not None:
            raise UsageError(
                f"shadow copy {{{cid}}} is recorded in set {{{holders[0].set_id}}}, "
                f"not in {{{sid}}}"
            )
        copy = CopyRecord(cid, sid, u.host, u.wire)
        stand_in = SetRecord(
            sid,
            u.host,
            session.settings.port,
            u.connect_host,
            sid,
            0,
            False,
            SetStatus.EXPOSED,
            time.time(),
            time.time(),
            copies=[copy],
        )
        return stand_in, copy
    mine = next((c for c in rec.copies if c.copy_id == cid), None)
    if mine is None:
        mine = CopyRecord(cid, sid, rec.server, u.wire)
        rec.copies.append(mine)  # not recorded: DeleteShareMapping only, the rest stays
    elif parse_unc(mine.share_unc).share.lower() != u.share.lower():
        raise UsageError(
            f"shadow copy {{{cid}}} is recorded for {mine.share_unc.rstrip(chr(92))}, "
            f"not {u.display}"
        )
    return rec, mine


def query(session: Session, uncs: Sequence[str]) -> int:
    """IsPathSupported and IsPathShadowCopied for each share.

    Every share is asked even when one fails, and ``--json`` lists each result
    or error, so one bad share does not hide the others' answers; the first
    failure then ends the command (its exit code), later ones are noted.
    """
    from remotevss.client.shadow import describe_error, query_path

    parsed = [parse_unc(text) for text in uncs]  # malformed paths: exit 2, nothing sent
    results: list[dict[str, object]] = []
    first_error: ClientError | None = None
    for u in parsed:
        try:
            q = query_path(u, session.credentials(), session.options(), connector=session.connector)
        except ClientError as exc:
            results.append(
                {"share": u.display, "error": describe_error(exc), "exit_code": exc.exit_code}
            )
            if first_error is not None:
                session.note(f"{u.display}: {describe_error(exc)}")
            first_error = first_error or exc
            continue
        copied = "unknown" if q.shadow_copied is None else "yes" if q.shadow_copied else "no"
        session.say(
            f"{q.unc}: {'supported' if q.supported else 'NOT supported'}"
            f"{f' (owner {q.owner})' if q.owner else ''}; shadow copied: {copied}"
            f"{f' ({q.note})' if q.note else ''}"
        )
        results.append(
            {
                "share": q.unc,
                "supported": q.supported,
                "owner": q.owner,
                "shadow_copied": q.shadow_copied,
                "compatibility": q.compatibility,
                "note": q.note,
            }
        )
    session.emit({"paths": results})
    if first_error is not None:
        raise first_error
    return EXIT_OK


def dispatch(session: Session, args: argparse.Namespace) -> int:
    """Run the command ``args`` names (not script mode); its exit status."""
    cmd = args.shadow_command
    if cmd == "add":
        return add(session, args.uncs, check=not args.no_check)
    if cmd == "create":
        create(
            session,
            args.uncs,
            context=args.context,
            writable=args.writable,
            expose=not args.no_expose,
            recover=args.recover,
        )
        return EXIT_OK
    if cmd == "list":
        return list_sets(session, args.ids, check=not args.no_check, prune=args.prune)
    if cmd == "expose":
        expose(session, args.ids, recover=args.recover)
        return EXIT_OK
    if cmd == "recover":
        return recover(session, args.ids)
    if cmd == "delete":
        return delete(
            session,
            args.ids,
            all_sets=args.all,
            server=args.server,
            share=args.share,
            set_id=args.set_id,
            copy_id=args.copy_id,
        )
    if cmd == "query":
        return query(session, args.uncs)
    return EXIT_USAGE  # pragma: no cover - argparse restricts the choices
