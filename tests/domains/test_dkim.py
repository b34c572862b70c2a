"""The signer against dkimpy, generatively: canonicalization byte for byte against
dkimpy's, and every signed message verifying there (both algorithms), whatever its
headers, folding, whitespace, 8-bit bytes or line ends; one byte changed fails."""

from __future__ import annotations

import base64

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.domains import dkim
from mailgate.domains.keys import public_value
from mailgate.models import DkimAlgorithm

RSA_KEY = rsa.generate_private_key(65537, 2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
SIGNERS = [
    dkim.Signer("example.org", "r", DkimAlgorithm.RSA, RSA_KEY),
    dkim.Signer("example.org", "e", DkimAlgorithm.ED25519, ED_KEY),
]
RECORDS = {
    b"r._domainkey.example.org.": f"v=DKIM1; k=rsa; p={public_value(RSA_KEY)}".encode(),
    b"e._domainkey.example.org.": f"v=DKIM1; k=ed25519; p={public_value(ED_KEY)}".encode(),
}


def dns(name: bytes, timeout: float = 5) -> bytes | None:
    return RECORDS.get(name)


def verified(message: bytes) -> list[bool]:
    results = []
    for i in range(message.count(b"DKIM-Signature:")):
        try:
            results.append(bool(dkimpy.DKIM(message).verify(idx=i, dnsfunc=dns)))
        except dkimpy.DKIMException:
            results.append(False)
    return results


wsp = st.sampled_from([" ", "\t", "  ", " \t ", ""])
word = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=12,
)
value = st.lists(st.tuples(wsp, word), min_size=1, max_size=6).map(
    lambda parts: "".join(w + t for w, t in parts)
)
name = st.sampled_from(
    ["Subject", "To", "Cc", "Reply-To", "X-Other", "Message-ID", "References", "subject", "TO"]
)
folded_value = st.tuples(value, st.lists(value, max_size=2)).map(
    lambda v: v[0] + "".join("\r\n\t" + x for x in v[1])
)
# no WSP before the colon: obsolete syntax (RFC 5322 4.5) that dkimpy refuses to parse
field = st.tuples(name, folded_value).map(lambda f: f"{f[0]}:{f[1]}")
body_line = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
line_end = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])  # bare LF: made CRLF first
body = st.lists(st.tuples(body_line, line_end), max_size=12).map(
    lambda lines: b"".join(a + b for a, b in lines)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.lists(field, max_size=8), body=body, trailing=st.sampled_from([b"", b"x  "]))
def test_every_signed_message_verifies_in_dkimpy_and_a_change_fails(
    fields: list[str], body: bytes, trailing: bytes
) -> None:
    head = "From: A <a@example.org>\r\n" + "".join(f + "\r\n" for f in fields)
    message = head.encode() + b"\r\n" + body + trailing
    signed = dkim.sign(message, SIGNERS, 1_700_000_000)
    assert verified(signed) == [True, True]
    assert verified(signed + b"changed\r\n") == [False, False]
    assert verified(b"From: evil@example.org\r\n" + signed) == [False, False], "From over-signed"


@settings(max_examples=300, deadline=None)
@given(body=body)
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    crlf = dkim.crlf_lines(body)
    assert dkim.relaxed_body(crlf) == Relaxed.canonicalize_body(crlf)


@settings(max_examples=300, deadline=None)
@given(field=field)
def test_relaxed_header_matches_dkimpy(field: str) -> None:
    name, _, value = field.encode().partition(b":")
    [(cname, cvalue)] = Relaxed.canonicalize_headers([(name, value + b"\r\n")])
    assert dkim.relaxed_header(field.encode()) == cname + b":" + cvalue


def test_the_signed_fields_and_the_signature_shape() -> None:
    message = (
        b"Received: from x\r\nFrom: a@example.org\r\nTo: b@x.test\r\nTo: c@x.test\r\n"
        b"Subject: s\r\nX-Mailer: m\r\nList-Unsubscribe: <mailto:u@example.org>\r\n\r\nbody\r\n"
    )
    signed = dkim.sign(message, SIGNERS, 1_700_000_000)
    fields, _ = dkim.split(signed)
    sigs = [f for f in fields if f.startswith(b"DKIM-Signature:")]
    assert len(sigs) == 2
    tags = dict(
        t.strip().split("=", 1)
        for t in sigs[0].decode().replace("\r\n\t", "").split(";")
        if t.strip()
    )
    assert tags["h"] == "from:from:to:to:subject:list-unsubscribe"
    assert (
        tags["c"] == "relaxed/relaxed" and tags["a"] == "rsa-sha256" and tags["t"] == "1700000000"
    )
    assert len(base64.b64decode(tags["b"].replace(" ", ""))) == 256
    assert all(len(line) <= 80 for f in sigs for line in f.split(b"\r\n"))
    assert signed.endswith(message), "the message itself is not changed (it was CRLF already)"


@pytest.mark.parametrize(
    ("raw", "fields", "body"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody", [b"A: 1", b"B: 2"], b"body"),
        (b"A: 1\r\n b\r\n\r\n", [b"A: 1\r\n b"], b""),
        (b"A: 1\r\n", [b"A: 1"], b""),
        (b"\r\nbody only", [], b"body only"),
    ],
)
def test_split(raw: bytes, fields: list[bytes], body: bytes) -> None:
    assert dkim.split(raw) == (fields, body)


junk_line = st.sampled_from(["bogus line", "bad name: x", "Subject : spaced", "From : b@x.test"])


@settings(max_examples=100, deadline=None)
@given(fields=st.lists(st.one_of(field, junk_line), max_size=6), body=body)
def test_a_header_block_with_junk_lines_is_made_well_formed_and_verifies(
    fields: list[str], body: bytes
) -> None:
    """A line that is not a field starts the body (as the door's header_facts reads it)
    and `Name :` loses its space: every verifier then parses what was signed."""
    head = "From: A <a@example.org>\r\n" + "".join(f + "\r\n" for f in fields)
    signed = dkim.sign(head.encode() + b"\r\n" + body, SIGNERS, 1_700_000_000)
    assert verified(signed) == [True, True]


def test_hundreds_of_signed_fields_keep_every_line_short() -> None:
    head = b"From: a@example.org\r\n" + b"To: someone@x.test\r\n" * 300
    signed = dkim.sign(head + b"\r\nbody\r\n", SIGNERS, 1_700_000_000)
    assert max(len(line) for line in signed.split(b"\r\n")) < 100
    assert verified(signed) == [True, True]


def test_the_key_file_is_one_key_when_processes_race(tmp_path: object) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from mailgate.secretbox import key_file

    path = Path(str(tmp_path)) / "secret.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: key_file(path), range(32)))
    assert len(keys) == 1 and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]
