"""Compose: a validated draft becomes RFC 5322 bytes (CRLF, no line over 998 octets).

Built by hand with the standard library's encoders (email.header, email.utils,
binascii) because the `email` package's object model took 1.2 ms per 2 KB message
here; this takes tens of microseconds. tests/test_compose.py parses the output back
with the `email` package (policy.default) and compares every field: that package is
the oracle, this is the fast path.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from dataclasses import dataclass
from email.header import Header
from email.utils import encode_rfc2231, formataddr, formatdate

CRLF = "\r\n"


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"
    content_id: str | None = None  # for inline images referenced as cid:...
    inline: bool = False


@dataclass(slots=True)  # not frozen: a frozen __init__ costs microseconds per message
class Draft:
    sender: tuple[str, str]  # (display name, address)
    to: tuple[tuple[str, str], ...] = ()
    cc: tuple[tuple[str, str], ...] = ()
    reply_to: tuple[tuple[str, str], ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # custom, already validated
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    message_id: str = ""
    date: float = 0.0


def _ascii(text: str) -> bool:
    return text.isascii()


def header_value(name: str, value: str) -> str:
    """An unstructured header value: as is when short ASCII, else RFC 2047 words, folded."""
    if _ascii(value) and len(name) + len(value) < 76:
        return value
    if _ascii(value) and all(len(w) < 70 for w in value.split(" ")):
        return _fold_words(name, value)
    return Header(value, "utf-8", header_name=name).encode(linesep=CRLF)


def _fold_words(name: str, value: str) -> str:
    lines, current = [], ""
    width = 76 - len(name) - 2
    for word in value.split(" "):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current, width = word, 76
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return (CRLF + " ").join(lines)


def address_list(mailboxes: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for name, address in mailboxes:
        local, _, domain = address.rpartition("@")
        if not domain.isascii():
            domain = domain.encode("idna").decode("ascii")
        parts.append(formataddr((name, f"{local}@{domain}"), charset="utf-8"))
    return ("," + CRLF + " ").join(parts)


def _text_part(body: str, subtype: str) -> tuple[list[str], bytes]:
    """Headers and encoded body of one text part: 7bit when it can be, else QP."""
    normal = body.replace("\r\n", "\n").replace("\r", "\n")
    lines = normal.split("\n")
    if _ascii(normal) and max(map(len, lines)) <= 998 and "\x00" not in normal:
        encoded = CRLF.join(lines).encode("ascii")
        cte = "7bit"
    elif (fast := _qp_printable(normal)) is not None:
        encoded, cte = fast, "quoted-printable"
    else:
        qp = binascii.b2a_qp(normal.encode("utf-8"), quotetabs=False, istext=True, header=False)
        encoded = qp.replace(b"\n", b"\r\n")
        cte = "quoted-printable"
    if not encoded.endswith(b"\r\n"):
        encoded += b"\r\n"
    return [f"Content-Type: text/{subtype}; charset=utf-8", f"Content-Transfer-Encoding: {cte}"], (
        encoded
    )


# What quoted-printable leaves as is: printable ASCII but '=', and tab and line feed.
_QP_LITERAL = bytes(b for b in range(0x20, 0x7F) if b != ord("=")) + b"\t\n"


def _qp_printable(text: str) -> bytes | None:
    """Quoted-printable for printable ASCII with long lines (an HTML body on one line),
    or None. Such text needs only soft line breaks, which slicing makes faster than
    binascii.b2a_qp's byte-by-byte loop. Text with '=', control characters or whitespace
    ending a line takes the general path."""
    if not text.isascii():
        return None
    raw = text.encode("ascii")
    if raw.translate(None, _QP_LITERAL):
        return None
    out = []
    for line in raw.split(b"\n"):
        if line.endswith((b" ", b"\t")):
            return None
        if len(line) <= 76:
            out.append(line)
        else:  # 75 characters and a soft break '=' per encoded line (RFC 2045 6.7)
            out.append(b"=\r\n".join([line[i : i + 75] for i in range(0, len(line), 75)]))
    return b"\r\n".join(out)


def _attachment_part(a: Attachment) -> tuple[list[str], bytes]:
    if a.filename.isascii() and '"' not in a.filename and "\\" not in a.filename:
        fname = f'filename="{a.filename}"'
        cname = f'name="{a.filename}"'
    else:
        fname = f"filename*={encode_rfc2231(a.filename, 'utf-8')}"
        cname = f"name*={encode_rfc2231(a.filename, 'utf-8')}"
    headers = [
        f"Content-Type: {a.content_type}; {cname}",
        "Content-Transfer-Encoding: base64",
        f"Content-Disposition: {'inline' if a.inline else 'attachment'}; {fname}",
    ]
    if a.content_id:
        headers.append(f"Content-ID: <{a.content_id}>")
    return headers, base64.encodebytes(a.content).replace(b"\n", b"\r\n")


def _multipart(subtype: str, parts: list[tuple[list[str], bytes]]) -> tuple[list[str], bytes]:
    boundary = "=_mg_" + os.urandom(12).hex()  # '=_' never occurs in QP or base64 output
    out = bytearray()
    for headers, body in parts:
        out += f"--{boundary}\r\n".encode() + CRLF.join(headers).encode() + b"\r\n\r\n" + body
    out += f"--{boundary}--\r\n".encode()
    return [f'Content-Type: multipart/{subtype}; boundary="{boundary}"'], bytes(out)


def _body(d: Draft) -> tuple[list[str], bytes]:
    texts = []
    if d.text is not None:
        texts.append(_text_part(d.text, "plain"))
    if d.html is not None:
        texts.append(_text_part(d.html, "html"))
    if not texts:
        texts.append(_text_part("", "plain"))
    body = texts[0] if len(texts) == 1 else _multipart("alternative", texts)
    inline = [_attachment_part(a) for a in d.attachments if a.inline]
    if inline:
        body = _multipart("related", [body, *inline])
    attached = [_attachment_part(a) for a in d.attachments if not a.inline]
    if attached:
        body = _multipart("mixed", [body, *attached])
    return body


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The Date header value; one per second is made (formatdate takes microseconds)."""
    return formatdate(second, localtime=False)


def compose(d: Draft) -> bytes:
    """The message as bytes ready to store and send."""
    head = [
        f"From: {address_list((d.sender,))}",
        f"Date: {_date(int(d.date))}",
        f"Message-ID: {d.message_id}",
    ]
    if d.to:
        head.append(f"To: {address_list(d.to)}")
    if d.cc:
        head.append(f"Cc: {address_list(d.cc)}")
    if d.reply_to:
        head.append(f"Reply-To: {address_list(d.reply_to)}")
    if d.subject is not None:
        head.append(f"Subject: {header_value('Subject', d.subject)}")
    if d.in_reply_to:
        head.append(f"In-Reply-To: {d.in_reply_to}")
    if d.references:
        head.append("References: " + (CRLF + " ").join(d.references))
    for name, value in d.headers:
        head.append(f"{name}: {header_value(name, value)}")
    head.append("MIME-Version: 1.0")
    body_headers, body = _body(d)
    head += body_headers
    return (CRLF.join(head) + CRLF + CRLF).encode("ascii") + body
