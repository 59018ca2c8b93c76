"""A network logon against Samba's own passdb, in a short-lived child process.

Why: on a standalone server smbd maps a user name whose domain is not the
server's own (the workgroup, an empty one, any unknown one) to the local SAM
and checks it there; winbindd, which ``ntlm_auth`` asks, sends such names to
a domain controller that does not exist (NT_STATUS_NO_LOGON_SERVERS).  Clients
name the workgroup all the time (smbtorture's and rpcclient's ``-U user``).
This module does what winbindd does for ``SERVER\\user``, for those names: it
reads the account's NT hash from the passdb, checks the NTLMv2 response with
the domain the client used (then upper case, then none, as Samba does) and
returns only the user session key, the same answer winbindd gives.  The hash
never leaves this process; the agent derives the exported key and checks the
MIC itself (agent/ntlm_auth.py).

Rules:
- NTLMv2 only (Samba's default ``ntlm auth = ntlmv2-only``): a v1 response is
  refused, never checked.
- Only enabled, unlocked normal accounts (``smbpasswd -a``/``pdbedit`` users);
  machine and trust accounts are refused as smbd refuses them over NTLM.
- One JSON request on stdin, one JSON answer on stdout, then exit: nothing
  (python-samba's per-call leaks included) outlives one logon.

Request: ``{"config", "user", "domain", "challenge", "nt_response"}`` (binary as
hex).  Answer: ``{"ok": true, "account", "domain", "user_session_key"}`` or
``{"ok": false, "status": "NT_STATUS_..."}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from typing import Any

ACB_DISABLED = 0x0001
ACB_NORMAL = 0x0010
ACB_AUTOLOCK = 0x0400
MAX_FIELD = 4096  # hex characters of one field: a response is a few hundred bytes


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.md5).digest()


def ntlmv2_session_key(
    nt_hash: bytes, user: str, domains: list[str], challenge: bytes, nt_response: bytes
) -> bytes | None:
    """The user session key if ``nt_response`` is the NTLMv2 answer to ``challenge``
    for one of ``domains`` (in Samba's order), else None."""
    if len(nt_response) <= 24 or len(challenge) != 8:
        return None  # NTLMv1 or LM: not accepted
    proof, blob = nt_response[:16], nt_response[16:]
    for domain in domains:
        owf = _hmac_md5(nt_hash, (user.upper() + domain).encode("utf-16-le"))
        if hmac.compare_digest(_hmac_md5(owf, challenge + blob), proof):
            return _hmac_md5(owf, proof)
    return None


def candidate_domains(domain: str) -> list[str]:
    """Samba's ntlm_password_check: as sent, upper case, then without a domain."""
    out: list[str] = []
    for d in (domain, domain.upper(), ""):
        if d not in out:
            out.append(d)
    return out


def logon(request: dict[str, Any]) -> dict[str, Any]:
    from samba.samba3 import param as s3param
    from samba.samba3 import passdb

    fields = ("config", "user", "domain", "challenge", "nt_response")
    if any(not isinstance(request.get(k), str) or len(request[k]) > MAX_FIELD for k in fields):
        return {"ok": False, "status": "NT_STATUS_INVALID_PARAMETER"}
    user = request["user"]
    try:
        challenge = bytes.fromhex(request["challenge"])
        nt_response = bytes.fromhex(request["nt_response"])
    except ValueError:
        return {"ok": False, "status": "NT_STATUS_INVALID_PARAMETER"}
    from remotevss.samba.conf import quiet_load

    lp = s3param.get_context()
    quiet_load(lp, request["config"])
    passdb.set_secrets_dir(lp.get("private dir"))
    pdb = passdb.PDB(lp.get("passdb backend"))
    try:
        account = pdb.getsampwnam(user)
    except passdb.error:
        return {"ok": False, "status": "NT_STATUS_LOGON_FAILURE"}  # no such user: not told
    flags = int(account.acct_ctrl)
    if not flags & ACB_NORMAL:
        return {"ok": False, "status": "NT_STATUS_NOLOGON_WORKSTATION_TRUST_ACCOUNT"}
    nt_hash = bytes(account.nt_passwd or b"")
    key = None
    if len(nt_hash) == 16:
        key = ntlmv2_session_key(
            nt_hash, user, candidate_domains(request["domain"]), challenge, nt_response
        )
    if key is None:
        return {"ok": False, "status": "NT_STATUS_LOGON_FAILURE"}
    if flags & ACB_DISABLED:  # after the password check, as Samba: no account probing
        return {"ok": False, "status": "NT_STATUS_ACCOUNT_DISABLED"}
    if flags & ACB_AUTOLOCK:
        return {"ok": False, "status": "NT_STATUS_ACCOUNT_LOCKED_OUT"}
    return {
        "ok": True,
        "account": str(account.username),
        "domain": str(lp.get("netbios name") or "").upper(),
        "user_session_key": key.hex(),
    }


def main() -> int:
    line = sys.stdin.readline(1 << 16)
    try:
        request = json.loads(line)
        answer = logon(request) if isinstance(request, dict) else None
    except json.JSONDecodeError:
        answer = None
    if answer is None:
        answer = {"ok": False, "status": "NT_STATUS_INVALID_PARAMETER"}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
