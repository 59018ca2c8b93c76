r"""Who may call, through smbd: the authorization matrix.

Principals (all real SMB sessions to a private smbd 4.17, the agent behind it):

=====================  ==========================================  ========
principal              how it is made                              expected
=====================  ==========================================  ========
root                   the Samba account of uid 0                  allowed
Administrators member  ``net groupmap`` S-1-5-32-544 -> unix       allowed
                       group, ``net sam addmem``
Backup Operators       same with S-1-5-32-551                      allowed
SeBackupPrivilege      ``net sam rights grant``                    allowed
ordinary user          ``smbpasswd -a``                            denied
guest                  unknown user, ``map to guest = Bad User``   denied (by smbd)
anonymous              null session (``restrict anonymous = 0``)   denied
=====================  ==========================================  ========

"Allowed" is MS-FSRVP's rule (<4>: Administrators, Backup Operators) plus
Samba's (SeBackupPrivilege, root), docs/decisions.md "Authorization".  A denied
principal gets E_ACCESSDENIED on all 13 opnums, called with the *real* ids of a
set that root has in progress, and nothing changes: the journal, the registry
shares, the snapshots on disk, and root's context and set (root's sequence
then completes with ZERO at every step).  The guest session never reaches the
agent: smbd 4.17 answers its IPC$ tree connect with STATUS_ACCESS_DENIED (the
test accepts that refusal for guest only, and still checks nothing changed).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from impacket.smbconnection import SessionError

from remotevss.fsrvp import calls
from remotevss.fsrvp.constants import CTX_BACKUP, HResult
from tests.hardening.harness import (
    ZERO,
    SmbFsrvp,
    Stack,
    add_smb_user,
    call_all_opnums,
    delete_all,
    read_journal,
    remove_smb_user,
    sequence,
    unc,
)
from tests.support.samba import PASSWORD

pytestmark = pytest.mark.root

PW = "Matrix-Passw0rd"
TAG = uuid.uuid4().hex[:6]
USERS = {
    "admin": f"rvadm{TAG}",
    "backupop": f"rvbop{TAG}",
    "sebackup": f"rvseb{TAG}",
    "ordinary": f"rvord{TAG}",
}
GROUPS = {"S-1-5-32-544": f"rvgadm{TAG}", "S-1-5-32-551": f"rvgbop{TAG}"}
ALLOWED = ["root", "admin", "backupop", "sebackup"]
DENIED = ["ordinary", "guest", "anonymous"]
SMBD_MAY_REFUSE = {"guest"}


@pytest.fixture(scope="module")
def principals(stack: Stack) -> Iterator[dict[str, tuple[str, str]]]:
    conf = stack.samba.conf
    net = ["net", "-s", str(conf)]
    made_groups = []
    try:
        for sid, group in GROUPS.items():
            subprocess.run(["groupadd", "--system", group], check=True, capture_output=True)
            made_groups.append(group)
            subprocess.run([*net, "groupmap", "add", f"sid={sid}", f"unixgroup={group}",
                            "type=builtin"], check=True, capture_output=True)  # fmt: skip
        for user in USERS.values():
            add_smb_user(conf, user, PW)
        steps = [
            [*net, "sam", "addmem", "BUILTIN\\Administrators", USERS["admin"]],
            [*net, "sam", "addmem", "BUILTIN\\Backup Operators", USERS["backupop"]],
            [*net, "sam", "rights", "grant", USERS["sebackup"], "SeBackupPrivilege"],
        ]
        for step in steps:
            out = subprocess.run(step, capture_output=True, text=True, check=False)
            assert out.returncode == 0, out.stdout + out.stderr
        creds = {k: (v, PW) for k, v in USERS.items()}
        creds["root"] = ("root", PASSWORD)
        creds["guest"] = (f"nosuchuser{TAG}", "whatever")  # mapped to guest
        creds["anonymous"] = ("", "")
        yield creds
    finally:
        for user in USERS.values():
            remove_smb_user(conf, user)
        for sid in GROUPS:
            subprocess.run([*net, "groupmap", "delete", f"sid={sid}"], capture_output=True,
                           check=False)  # fmt: skip
        for group in made_groups:
            subprocess.run(["groupdel", group], capture_output=True, check=False)


def _open(st: Stack, creds: tuple[str, str]) -> SmbFsrvp:
    return st.client(user=creds[0], password=creds[1])


def _observable(st: Stack) -> tuple[object, ...]:
    j = read_journal(st.agent.workdir / "state")
    snaps = sorted(str(p) for r in st.shares.values() for p in (r / ".snapshots").glob("*"))
    return (j.sets, j.copies, j.exposed, j.intents, st.registry_snapshot_shares(), snaps)


@pytest.mark.parametrize("who", ALLOWED)
def test_allowed_principal_runs_a_sequence(clean_stack: Stack, principals: dict[str, tuple[str, str]],
                                           who: str) -> None:  # fmt: skip
    with _open(clean_stack, principals[who]) as c:
        codes = call_all_opnums(c, unc("data0"))
        assert HResult.E_ACCESSDENIED not in codes, [hex(x) for x in codes]
        # the calls above took the context and started a set: the same client's retry
        # of SetContext drops that set, then Start + Abort frees the context
        assert c.set_context(CTX_BACKUP).return_value == ZERO
        r = c.start(uuid.uuid4())
        assert r.return_value == ZERO, hex(r.return_value)
        assert c.abort(r.shadow_copy_set_id).return_value == ZERO
        sid, copies = sequence(c, ["data0"], CTX_BACKUP)
        assert len(clean_stack.registry_snapshot_shares()) == 1
        delete_all(c, sid, copies)
    log = clean_stack.agent.log.read_text()
    assert f"pipe opened by HARDFS\\{principals[who][0]}" in log


def _hostile_calls(c: SmbFsrvp, sid: uuid.UUID, cid: uuid.UUID) -> list[int]:
    u = unc("data0")
    reqs: list[calls.Request] = [
        calls.GetSupportedVersionRequest(), calls.SetContextRequest(CTX_BACKUP),
        calls.StartShadowCopySetRequest(uuid.uuid4()),
        calls.AddToShadowCopySetRequest(sid, uuid.uuid4(), unc("data1")),
        calls.CommitShadowCopySetRequest(sid, 1000), calls.ExposeShadowCopySetRequest(sid, 1000),
        calls.RecoveryCompleteShadowCopySetRequest(sid), calls.AbortShadowCopySetRequest(sid),
        calls.IsPathSupportedRequest(u), calls.IsPathShadowCopiedRequest(u),
        calls.GetShareMappingRequest(cid, sid, u, 1), calls.DeleteShareMappingRequest(sid, cid, u),
        calls.PrepareShadowCopySetRequest(sid, 1000),
    ]  # fmt: skip
    return [c.call(r).return_value for r in reqs]


@pytest.mark.parametrize("who", DENIED)
def test_denied_principal_changes_nothing(clean_stack: Stack,
                                          principals: dict[str, tuple[str, str]],
                                          who: str) -> None:  # fmt: skip
    st = clean_stack
    with _open(st, principals["root"]) as root:
        assert root.set_context(CTX_BACKUP).return_value == ZERO
        r = root.start(uuid.uuid4())
        sid = r.shadow_copy_set_id
        a = root.add(sid, unc("data0"))
        assert a.return_value == ZERO
        before = _observable(st)
        try:
            c = _open(st, principals[who])
        except SessionError as exc:
            # smbd itself refuses first (guest: STATUS_ACCESS_DENIED at the IPC$ tree
            # connect with smbd 4.17); the agent never sees a byte.  Still denied.
            assert exc.getErrorCode() == 0xC0000022, exc  # STATUS_ACCESS_DENIED
            assert who in SMBD_MAY_REFUSE, f"{who}: refused by smbd: {exc}"
            print(f"{who}: refused by smbd ({exc})")
        else:
            try:
                codes = _hostile_calls(c, sid, a.shadow_copy_id)
            finally:
                c.close()
            assert codes == [HResult.E_ACCESSDENIED] * 13, [hex(x) for x in codes]
            print(f"{who}: E_ACCESSDENIED on all 13 opnums")
        assert _observable(st) == before
        # root's context and set are untouched: its sequence goes on
        for step in ("prepare", "commit", "expose"):
            assert getattr(root, step)(sid).return_value == ZERO, step
        assert root.recovery_complete(sid).return_value == ZERO
        delete_all(root, sid, {"data0": a.shadow_copy_id})


# The guest session never reaches the agent through smbd 4.17 (above); the token smbd
# would hand over for it, and an anonymous one, forged at the pipe socket:
GUEST_TOKEN = {"sids": ["S-1-5-21-1-2-3-501", "S-1-5-21-1-2-3-514", "S-1-1-0", "S-1-5-2",
                        "S-1-5-32-546", "S-1-22-1-65534", "S-1-22-2-65534"],
               "uid": 65534, "gid": 65534, "groups": [65534], "account_name": "nobody",
               "unix_name": "nobody"}  # fmt: skip
ANON_TOKEN = {"sids": ["S-1-5-7", "S-1-1-0", "S-1-5-2", "S-1-22-1-65534"], "uid": 65534,
              "gid": 65534, "groups": [65534], "account_name": "ANONYMOUS LOGON",
              "unix_name": "nobody"}  # fmt: skip


@pytest.mark.parametrize("token", [GUEST_TOKEN, ANON_TOKEN], ids=["guest", "anonymous"])
def test_guest_and_anonymous_tokens_at_the_pipe(tmp_path: Path, token: dict[str, Any]) -> None:
    from tests.support.npa_build import NpaSpec, build_request
    from tests.support.pipe_harness import bind, call, open_pipe, recv_exact, serve_listener

    with serve_listener(tmp_path) as served:
        blob = build_request(NpaSpec(privilege_mask=0, **token))
        with open_pipe(served.path, blob) as s:
            recv_exact(s, 36)
            bind(s)
            u = unc("share0")
            reqs = _all_requests(u)
            codes = [call(s, r, i + 2).return_value for i, r in enumerate(reqs)]
        assert codes == [HResult.E_ACCESSDENIED] * 13
        assert served.service.journal.load_sets() == []
        assert served.service.journal.pending_intents() == []


def _all_requests(u: str) -> list[calls.Request]:
    x = uuid.uuid4
    return [
        calls.GetSupportedVersionRequest(), calls.SetContextRequest(0),
        calls.StartShadowCopySetRequest(x()), calls.AddToShadowCopySetRequest(x(), x(), u),
        calls.CommitShadowCopySetRequest(x(), 1000), calls.ExposeShadowCopySetRequest(x(), 1000),
        calls.RecoveryCompleteShadowCopySetRequest(x()), calls.AbortShadowCopySetRequest(x()),
        calls.IsPathSupportedRequest(u), calls.IsPathShadowCopiedRequest(u),
        calls.GetShareMappingRequest(x(), x(), u, 1), calls.DeleteShareMappingRequest(x(), x(), u),
        calls.PrepareShadowCopySetRequest(x(), 1000),
    ]  # fmt: skip
