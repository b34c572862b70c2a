"""DKIM signatures (RFC 6376), relaxed/relaxed, with RSA-SHA256 and Ed25519-SHA256
(RFC 8463). Pure: bytes and keys in, the signed bytes out.

The signature itself is OpenSSL's (the `cryptography` package): dkimpy's pure-Python RSA
took ~27 ms a message on a slow machine, OpenSSL ~2 ms. dkimpy, Mail::DKIM and OpenDKIM
are the oracles the tests verify these signatures with.

What is signed is what is sent: the bytes are given CRLF line ends first (wire.py) and a
header block of fields only (well_formed), so delivery adds only dot-stuffing and the
final dot, which the receiver takes off."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailgate.models import DkimAlgorithm
from mailgate.wire import crlf_lines

# Signed when present (RFC 6376 5.4.1's list, and the ones a receiver shows or acts
# on); From is listed once more than it occurs, so no From can be added after signing.
SIGNED_FIELDS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
OVERSIGNED = frozenset({"from"})
_SIGNED = {name.encode(): name for name in SIGNED_FIELDS}  # in SIGNED_FIELDS' order
_FIELD_START = re.compile(rb"([!-9;-~]+)[ \t]*:")  # ftext name (RFC 5322 3.6.8), colon
# A header block of fields only, each name right before its colon: most mail, checked in
# one pass instead of line by line
_FOLDED_FIELD = re.compile(rb"[^\r\n]+(?:\r\n[ \t][^\r\n]*)*")  # a line, its continuations
_WELL_FORMED = re.compile(rb"(?:[!-9;-~]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*")
_B64_LINE = 72  # characters of b= per folded line


@dataclass(frozen=True, slots=True)
class Signer:
    """One key of a sending domain, ready to sign (the private key decrypted)."""

    domain: str  # d=
    selector: str  # s=
    algorithm: DkimAlgorithm
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def well_formed(raw: bytes) -> bytes:
    """CRLF-only bytes whose header block holds only fields, so that every verifier
    parses it as the door did: a line that is neither a field nor a continuation starts
    the body (an empty line is put before it; the door's header_facts stopped there
    too), and obsolete space before a field's colon (`From : x`, RFC 5322 4.5) is
    dropped (dkimpy fails such fields). raw itself when nothing needs it."""
    if raw.startswith(b"\r\n"):
        return raw
    end = raw.find(b"\r\n\r\n")
    head_end = len(raw) if end < 0 else end
    if _WELL_FORMED.fullmatch(raw, 0, head_end + 2) is not None:
        return raw
    lines = raw[:head_end].split(b"\r\n")
    out: list[bytes] = []
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t") and out:
            out.append(line)
            continue
        m = _FIELD_START.match(line)
        if m is None:
            if not line and i == len(lines) - 1:  # the CRLF ending a header-only message
                out.append(line)
                break
            head = b"\r\n".join(out) + b"\r\n" if out else b""
            return head + b"\r\n" + b"\r\n".join(lines[i:]) + raw[head_end:]
        out.append(line if m.end(1) == m.end(0) - 1 else m.group(1) + line[m.end(0) - 1 :])
    if len(out) == len(lines) and all(a is b for a, b in zip(out, lines, strict=True)):
        return raw
    return b"\r\n".join(out) + raw[head_end:]


def split(raw: bytes) -> tuple[list[bytes], bytes]:
    """CRLF-only bytes -> header fields (each with its folded lines, no final CRLF) and
    the body. A message without an empty line is all header and an empty body."""
    if raw.startswith(b"\r\n"):
        return [], raw[2:]
    end = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if end < 0 else (raw[:end], raw[end + 4 :])
    return _FOLDED_FIELD.findall(head), body


def one_space(text: bytes) -> bytes:
    """Every run of SP and HTAB as one SP. Byte replaces, not a regex: a regex pass cost
    1.5 ms per 100 KB of body here, these ~0.2 ms (a run of n spaces takes log2(n)
    passes; bodies hold short runs)."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    return text


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2: name lower-cased, value unfolded, WSP runs one SP, no WSP around
    the colon or at the ends."""
    name, _, value = field.partition(b":")
    value = one_space(value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP runs one SP, none at line ends, no empty lines at the end, and
    a non-empty body ends with CRLF."""
    body = one_space(body).replace(b" \r\n", b"\r\n").rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def field_name(field: bytes) -> bytes:
    return field.partition(b":")[0].rstrip(b" \t").lower()


def signed_fields(fields: Sequence[bytes]) -> tuple[list[str], list[bytes]]:
    """The h= list and the fields it selects, in order: each name as often as it occurs
    (instances are taken from the bottom up, RFC 6376 5.4.2), plus once more if
    over-signed (that one selects nothing)."""
    by_name: dict[bytes, list[bytes]] = {}
    for f in fields:
        name = field_name(f)
        if name in _SIGNED:
            by_name.setdefault(name, []).append(f)
    names: list[str] = []
    chosen: list[bytes] = []
    for name, key in _SIGNED.items():
        present = by_name.get(name, ())
        names.extend([key] * (len(present) + (key in OVERSIGNED)))
        chosen.extend(reversed(present))
    return names, chosen


def sign(raw: bytes, signers: Sequence[Signer], now: int) -> bytes:
    """raw as sent (CRLF line ends, the last line ended as data_block ends it) with one
    DKIM-Signature field per signer above it."""
    raw = crlf_lines(raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    raw = well_formed(raw)
    fields, body = split(raw)
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    names, chosen = signed_fields(fields)
    canonical = b"".join(relaxed_header(f) for f in chosen)
    h = folded(names)
    added: list[bytes] = []
    for s in signers:
        head = (
            f"DKIM-Signature: v=1; a={s.algorithm.value}; c=relaxed/relaxed; d={s.domain};"
            f"\r\n\ts={s.selector}; t={now};\r\n\th={h};\r\n\tbh={bh};\r\n\tb="
        ).encode("ascii")
        data = canonical + relaxed_header(head)[:-2]  # the field itself without its CRLF
        b = base64.b64encode(_signature(s, data)).decode()
        b_lines = "\r\n\t".join(b[i : i + _B64_LINE] for i in range(0, len(b), _B64_LINE))
        added.append(head + b_lines.encode("ascii") + b"\r\n")
    return b"".join(added) + raw


def folded(names: Sequence[str]) -> str:
    """The h= value, folded before a colon when a line would pass ~72 characters (a
    message with hundreds of To fields must not make a line over 998 octets)."""
    lines, line = [], ""
    for name in names:
        if line and len(line) + len(name) > _B64_LINE:
            lines.append(line)
            line = ""
        line += (":" if line or lines else "") + name
    return "\r\n\t".join([*lines, line])


def _signature(s: Signer, data: bytes) -> bytes:
    if isinstance(s.key, rsa.RSAPrivateKey):
        return s.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    # RFC 8463 3: Ed25519 (pure) over the SHA-256 hash of the data
    return s.key.sign(hashlib.sha256(data).digest())
