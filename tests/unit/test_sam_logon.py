"""The local SAM logon's NTLMv2 check (remotevss.samba.sam_logon), against responses
made by pyspnego's client-side primitives, the library the agent seals with."""

from __future__ import annotations

import os

from spnego._ntlm_raw.crypto import compute_response_v2, ntowfv1, ntowfv2
from spnego._ntlm_raw.messages import AvId, FileTime, TargetInfo

from remotevss.samba.sam_logon import candidate_domains, ntlmv2_session_key

PASSWORD = "Passw0rd-remotevss"
CHALLENGE = bytes(range(8))


def _response(user: str, domain: str, password: str = PASSWORD) -> tuple[bytes, bytes]:
    """(NTLMv2 response, session base key) as a client naming ``domain`` sends it."""
    owf = ntowfv2(user, ntowfv1(password), domain)
    info = TargetInfo()
    info[AvId.nb_computer_name] = "ANCHORFS"
    nt, _lm, key = compute_response_v2(owf, CHALLENGE, os.urandom(8), FileTime.now(), info)
    return nt, key


def test_the_domain_the_client_hashed_is_tried_first_then_upper_then_none() -> None:
    assert candidate_domains("WorkGroup") == ["WorkGroup", "WORKGROUP", ""]
    assert candidate_domains("") == [""]
    nt_hash = ntowfv1(PASSWORD)
    for sent_domain in ("WORKGROUP", "workgroup", ""):
        nt, key = _response("root", sent_domain)
        # the client hashed sent_domain; it names "workgroup" (or nothing)
        named = sent_domain.lower() if sent_domain else ""
        got = ntlmv2_session_key(nt_hash, "root", candidate_domains(named), CHALLENGE, nt)
        assert got == key, sent_domain


def test_wrong_password_other_challenge_and_v1_are_refused() -> None:
    nt_hash = ntowfv1(PASSWORD)
    nt, _ = _response("root", "WORKGROUP", "wrong")
    assert ntlmv2_session_key(nt_hash, "root", ["WORKGROUP"], CHALLENGE, nt) is None
    nt, _ = _response("root", "WORKGROUP")
    assert ntlmv2_session_key(nt_hash, "root", ["WORKGROUP"], bytes(8), nt) is None
    assert ntlmv2_session_key(nt_hash, "root", ["OTHER", ""], CHALLENGE, nt) is None
    assert ntlmv2_session_key(nt_hash, "root", ["WORKGROUP"], CHALLENGE, nt[:24]) is None
    # the user name is part of the hash: another account's response does not fit
    assert ntlmv2_session_key(nt_hash, "admin", ["WORKGROUP"], CHALLENGE, nt) is None
