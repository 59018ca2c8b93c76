"""The agent's own NTLM and SPNEGO code, byte for byte against pyspnego (property tests).

Why: ntlm_crypto, ntlm_msg and spnego_der replace pyspnego in the agent (its
package costs ~11 MB resident); pyspnego stays the reference the suite's
clients use, so any byte we compute differently shows up here first.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spnego._asn1 import pack_asn1_object_identifier
from spnego._ntlm_raw.crypto import RC4Handle, sealkey, signkey
from spnego._ntlm_raw.messages import (
    Authenticate,
    AvFlags,
    AvId,
    Challenge,
    NegotiateFlags,
    NTClientChallengeV2,
    TargetInfo,
    Version,
)
from spnego._ntlm_raw.security import seal, sign
from spnego._spnego import NegState, NegTokenInit, NegTokenResp, pack_mech_type_list, unpack_token

from remotevss.dcerpc import ntlm_crypto, ntlm_msg, spnego_der
from remotevss.dcerpc.ntlm_seal import NtlmSeal, SignatureError

ESS = int(NegotiateFlags.extended_session_security)
FLAG_BITS = st.sampled_from([
    int(NegotiateFlags.sign), int(NegotiateFlags.seal), int(NegotiateFlags.key_128),
    int(NegotiateFlags.key_56), int(NegotiateFlags.key_exch), int(NegotiateFlags.unicode),
])  # fmt: skip
ESS_FLAGS = st.lists(FLAG_BITS).map(lambda bits: ESS | sum(set(bits)))
KEYS = st.binary(min_size=16, max_size=16)
# arcs from 1: pyspnego drops arcs of 0 when it encodes (test_oid_zero_arcs covers them)
OIDS = st.lists(st.integers(1, 2**40), min_size=1, max_size=6).flatmap(
    lambda tail: st.tuples(st.integers(0, 1), st.integers(0, 39)).map(
        lambda head: ".".join(str(a) for a in [*head, *tail])
    )
)


def test_constants_are_pyspnegos() -> None:
    assert NegotiateFlags.sign == ntlm_crypto.SIGN
    assert NegotiateFlags.seal == ntlm_crypto.SEAL
    assert ntlm_crypto.EXTENDED_SESSION_SECURITY == ESS
    assert NegotiateFlags.key_128 == ntlm_crypto.KEY_128
    assert NegotiateFlags.key_56 == ntlm_crypto.KEY_56
    assert NegotiateFlags.key_exch == ntlm_crypto.KEY_EXCH
    assert NegotiateFlags.unicode == ntlm_crypto.UNICODE
    assert AvId.flags == ntlm_msg.AV_FLAGS and AvFlags.mic == ntlm_msg.AV_FLAG_MIC
    assert spnego_der.NTLM_OID == "1.3.6.1.4.1.311.2.2.10"


@given(st.sampled_from([5, 7, 8, 10, 16, 20, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       st.lists(st.binary(max_size=300), max_size=5))  # the key sizes cryptography allows
def test_rc4_stream_matches(key: bytes, chunks: list[bytes]) -> None:
    ours, theirs = ntlm_crypto.Rc4(key), RC4Handle(key)
    for chunk in chunks:
        assert ours.update(chunk) == theirs.update(chunk)


def test_rc4_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError, match="RC4 key"):
        ntlm_crypto.Rc4(b"")


@given(ESS_FLAGS, KEYS, st.sampled_from(["initiate", "accept"]))
def test_key_derivation_matches(flags: int, key: bytes, usage: str) -> None:
    assert ntlm_crypto.signkey(flags, key, usage) == signkey(flags, key, usage)
    assert ntlm_crypto.sealkey(flags, key, usage) == sealkey(flags, key, usage)


@given(ESS_FLAGS, KEYS, st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=200),
                                           st.booleans()), max_size=6))  # fmt: skip
def test_sign_and_seal_match(flags: int, key: bytes, messages: list[tuple[int, bytes, bool]]) -> None:
    """The MAC and seal over one RC4 stream, in any order of signs and seals."""
    flags |= int(NegotiateFlags.sign)
    skey, ckey = signkey(flags, key, "accept"), sealkey(flags, key, "accept")
    ours, theirs = ntlm_crypto.Rc4(ckey), RC4Handle(ckey)
    for seq, data, sealed in messages:
        if sealed:
            want = seal(flags, theirs, skey, seq, data, to_sign=b"hdr" + data)
            got_body = ours.update(data)
            assert (got_body, ntlm_crypto.mac(flags, ours, skey, seq, b"hdr" + data)) == want
        else:
            assert ntlm_crypto.mac(flags, ours, skey, seq, data) == sign(
                flags, theirs, skey, seq, data
            )


@given(ESS_FLAGS, KEYS, st.binary(max_size=100))
def test_seal_state_round_trip_and_tamper(flags: int, key: bytes, data: bytes) -> None:
    """Our acceptor verifies what a pyspnego-keyed initiator seals; a flipped bit fails."""
    flags |= int(NegotiateFlags.sign | NegotiateFlags.seal)
    acceptor = NtlmSeal(key, flags)
    handle = RC4Handle(sealkey(flags, key, "initiate"))
    sealed, sig = seal(flags, handle, signkey(flags, key, "initiate"), 0, data, to_sign=data)
    assert acceptor.unseal(sealed) == data
    acceptor.verify(data, sig)
    with pytest.raises(SignatureError):
        acceptor.verify(data, sig)  # replay: the sequence number moved on


# ------------------------------------------------------------------ SPNEGO


@given(OIDS)
def test_oid_encoding_matches(oid: str) -> None:
    der = spnego_der.encode_oid(oid)
    assert der == pack_asn1_object_identifier(oid)
    assert spnego_der.decode_oid(der[2:] if der[1] < 0x80 else der[3:]) == oid


def test_oid_zero_arcs() -> None:
    """X.690 8.19: an arc of 0 is one 0x00 byte (pyspnego omits it)."""
    assert spnego_der.encode_oid("1.2.0.5") == bytes.fromhex("06032a0005")
    assert spnego_der.decode_oid(bytes.fromhex("2a0005")) == "1.2.0.5"
    with pytest.raises(spnego_der.DerError, match="minimal"):
        spnego_der.decode_oid(bytes.fromhex("2a8005"))


@given(st.lists(OIDS, min_size=1, max_size=4), st.one_of(st.none(), st.binary(max_size=300)),
       st.one_of(st.none(), st.binary(min_size=1, max_size=40)))  # fmt: skip
def test_neg_token_init_reads_as_pyspnego_packs(
    mechs: list[str], token: bytes | None, mic: bytes | None
) -> None:
    raw = NegTokenInit(mechs, mech_token=token, mech_list_mic=mic).pack()
    got = spnego_der.unpack(raw)
    assert isinstance(got, spnego_der.NegTokenInit)
    assert got.mech_types == mechs
    assert got.mech_types_der == pack_mech_type_list(mechs) == spnego_der.mech_type_list(mechs)
    assert got.mech_token == token


STATES = st.one_of(st.none(), st.sampled_from(list(NegState)))


@given(STATES, st.one_of(st.none(), OIDS), st.one_of(st.none(), st.binary(max_size=300)),
       st.one_of(st.none(), st.binary(max_size=40)))  # fmt: skip
def test_neg_token_resp_both_ways(
    state: NegState | None, mech: str | None, token: bytes | None, mic: bytes | None
) -> None:
    raw = NegTokenResp(state, mech, token, mic).pack()
    got = spnego_der.unpack(raw)
    assert got == spnego_der.NegTokenResp(
        None if state is None else int(state), mech, token, mic
    )
    if state is not None:
        assert spnego_der.pack_resp(int(state), mech, token, mic) == raw


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_garbage_is_refused_or_read_as_pyspnego_reads_it(data: bytes) -> None:
    try:
        ours = spnego_der.unpack(data)
    except ValueError:
        return
    theirs = unpack_token(data)
    if isinstance(ours, spnego_der.NegTokenInit):
        assert (theirs.mech_types, theirs.mech_token) == (ours.mech_types, ours.mech_token)
    else:
        assert (theirs.neg_state, theirs.supported_mech, theirs.response_token,
                theirs.mech_list_mic) == (ours.neg_state, ours.supported_mech,
                                          ours.response_token, ours.mech_list_mic)  # fmt: skip


@pytest.mark.parametrize("token", [
    b"", b"\xa0", b"\xa0\x05\x30\x03", b"\xa1\x03\x30\x01\x00",  # truncated
    NegTokenResp(NegState.accept_complete).pack() + b"\0",  # trailing bytes
    b"\x60\x06\x06\x04\x2a\x03\x04\x05",  # initial token of another mechanism
    b"\xa2\x02\x30\x00",  # neither init nor resp
    b"\xa1\x07\x30\x05\xa0\x03\x0a\x01\x07",  # negState out of range
])  # fmt: skip
def test_malformed_spnego_is_a_value_error(token: bytes) -> None:
    with pytest.raises(spnego_der.DerError):
        spnego_der.unpack(token)


# ---------------------------------------------------------------- NTLMSSP


NAMES = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=20)


@given(st.booleans(), NAMES, NAMES, st.binary(max_size=16), st.integers(0, 7), KEYS)
def test_authenticate_fields_and_mic_match(
    unicode: bool, user: str, domain: str, session_key: bytes, av: int, mic: bytes
) -> None:
    flags = int(NegotiateFlags.unicode) if unicode else int(NegotiateFlags.oem)
    if not unicode:  # the OEM code page pyspnego uses
        user = user.encode("windows-1252", "replace").decode("windows-1252")
        domain = domain.encode("windows-1252", "replace").decode("windows-1252")
    info = TargetInfo()
    info[AvId.flags] = AvFlags(av)
    nt = b"P" * 16 + NTClientChallengeV2(client_challenge=b"c" * 8, av_pairs=info).pack()
    msg = Authenticate(flags, b"\0" * 24, nt, domain, user, "WS", session_key or None,
                       Version(10, 0, 19041, 15), mic)  # fmt: skip
    raw = msg.pack()
    got = ntlm_msg.Authenticate.unpack(raw)
    assert (got.user_name, got.domain_name) == (user, domain)
    assert got.flags == msg.flags
    assert got.nt_challenge_response == nt
    assert got.encrypted_random_session_key == session_key
    assert got.mic == mic
    assert ntlm_msg.av_flags(nt) == int(NTClientChallengeV2.unpack(nt[16:]).av_pairs[AvId.flags])
    msg.mic = b"\0" * 16
    assert got.without_mic() == msg.pack()


def test_challenge_fields_match() -> None:
    raw = Challenge(int(NegotiateFlags.sign | NegotiateFlags.unicode), b"12345678", "SRV").pack()
    got = ntlm_msg.Challenge.unpack(raw)
    assert got.server_challenge == b"12345678"
    assert got.flags == Challenge.unpack(raw).flags


def test_authenticate_field_outside_the_message_is_refused() -> None:
    raw = bytearray(Authenticate(1, b"", b"", "D", "u", "WS", None, Version(10, 0, 1, 15)).pack())
    struct.pack_into("<I", raw, 36 + 4, len(raw))  # the user name's offset past the end
    with pytest.raises(ValueError, match="outside"):
        ntlm_msg.Authenticate.unpack(bytes(raw))


def test_authenticate_without_room_for_a_mic_has_none() -> None:
    raw = Authenticate(1, b"", b"", "D", "u", "WS").pack()  # no Version: MIC at 64
    with pytest.raises(ValueError, match="MIC"):
        ntlm_msg.Authenticate.unpack(raw).without_mic()
