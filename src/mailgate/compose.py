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
import re
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import quote

from mailgate.addresses import ascii_domain

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


# RFC 2047 2: an encoded word is at most 75 characters. "=?utf-8?b?" + "?=" leave 63 for
# base64, i.e. 45 octets; lines of one word and a space stay within 78 (RFC 5322 2.1.1).
_WORD_OCTETS = 45
_EW_OVERHEAD = len("=?utf-8?b??=")


def _encoded_words(text: str, first_room: int = 78) -> list[str]:
    """`text` as RFC 2047 base64 words of at most 75 characters, never cutting a UTF-8
    character, cut after a space where one is near (decoders join adjacent words).
    The first word fits in `first_room` characters when that holds one character."""
    raw = text.encode("utf-8")
    words, start = [], 0
    room = max(1, (first_room - _EW_OVERHEAD) // 4 * 3)
    while start < len(raw):
        end = min(start + min(room, _WORD_OCTETS), len(raw))
        while end < len(raw) and end > start and raw[end] & 0xC0 == 0x80:
            end -= 1  # a continuation octet: cut before its character
        if end == start:  # one character larger than the room: give it a word alone
            end = start + 1
            while end < len(raw) and raw[end] & 0xC0 == 0x80:
                end += 1
        elif end < len(raw):
            space = raw.rfind(b" ", start + (end - start) // 2, end)
            end = space + 1 if space >= 0 else end
        chunk = binascii.b2a_base64(raw[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{chunk}?=")
        start, room = end, _WORD_OCTETS
    return words


# Text a reader would decode as an RFC 2047 word is itself sent encoded, or it would not
# read back as the text given.
_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")


def _looks_encoded(text: str) -> bool:
    return "=?" in text and _ENCODED_WORD.search(text) is not None


def header_value(name: str, value: str) -> str:
    """An unstructured header value: as is when short ASCII, folded at whitespace when
    long ASCII, else RFC 2047 words one per line. No line over 78 octets but for an ASCII
    word longer than that (a URL in a custom header) or a run of spaces no fold can split,
    and never over 998: what cannot fold within 998 is encoded. Leading whitespace is
    encoded too: parsers drop it after the colon."""
    if _ascii(value) and value[:1] not in (" ", "\t") and not _looks_encoded(value):
        if len(name) + len(value) <= 76:
            return value
        folded = _fold_words(name, value)
        if folded is not None:
            return folded
    return (CRLF + " ").join(_encoded_words(value, 78 - len(name) - 2))


_WSP = re.compile(r"[ \t]")
_NON_WSP = re.compile(r"[^ \t]")


def _fold_words(name: str, value: str) -> str | None:
    """Fold at the last space or tab that keeps the line within 78 (else the first after
    its word); that space or tab starts the next line, so unfolding (removing the CRLFs)
    gives the value back. Every line holds a word: the value's trailing whitespace stays
    with its last word. None when a line would pass 998 octets (a word or a run of
    spaces too long to fold)."""
    end = len(value.rstrip(" \t"))  # a fold before `end` leaves a word after it
    tabs = "\t" in value
    lines: list[str] = []
    pos, room = 0, 76 - len(name)  # "Name: " starts the first line
    while len(value) - pos > room:
        found = _NON_WSP.search(value, pos)  # never None: pos < end
        first = found.end() if found else pos + 1  # a fold leaves a word on the line
        stop = min(pos + room + 1, end)
        cut = value.rfind(" ", first, stop)
        if tabs:
            cut = max(cut, value.rfind("\t", first, stop))
        if cut < 0:  # the line's first word passes 78: fold after it
            after = _WSP.search(value, first)
            if after is None or after.start() >= end:
                break
            cut = after.start()
        lines.append(value[pos:cut])
        pos, room = cut, 78
    lines.append(value[pos:])
    if len(name) + 2 + len(lines[0]) > 998 or max(map(len, lines)) > 998:
        return None
    return CRLF.join(lines)


_SPECIALS = frozenset('()<>[]:;@\\,."')


def header_address(address: str) -> str:
    """The addr-spec as a header carries it: domain as A-labels (what DNS and the
    envelope resolve), a UTF-8 local part raw (RFC 6532: never as encoded words)."""
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    return f"{local}@{ascii_domain(domain)}"


def _mailbox(name: str, address: str, room: int) -> str:
    addr = header_address(address)
    size = len(addr) if addr.isascii() else len(addr.encode())  # lines count octets
    if not name:
        return addr
    short = _ascii(name) and name.isprintable() and len(name) + size + 5 <= room
    if short and not _looks_encoded(name):
        if any(c in _SPECIALS for c in name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{addr}>"
    words = _encoded_words(name, room)
    lines = (CRLF + " ").join(words)
    last = len(words[-1]) + size + 3  # the last word, a space and <addr>
    if last + 1 <= 77 and (len(words) > 1 or last <= room):
        return f"{lines} <{addr}>"
    return f"{lines}{CRLF} <{addr}>"


def address_list(mailboxes: tuple[tuple[str, str], ...], name: str = "To") -> str:
    """Mailboxes one per line; display names that are not short printable ASCII become
    RFC 2047 words of at most 75 characters."""
    parts = []
    room = 78 - len(name) - 2 - 1  # "Name: " before, "," after
    for display, address in mailboxes:
        parts.append(_mailbox(display, address, room))
        room = 78 - 1 - 1  # later mailboxes start a line with a space
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


def _plain(value: str) -> bool:
    """Printable ASCII that a quoted-string carries without escapes."""
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def _param_lines(param: str, value: str) -> list[str]:
    """`param="value"` when short printable ASCII, else RFC 2231 sections of at most
    about 60 characters (param*0*=utf-8''...;, param*1*=...), each a whole character."""
    if len(value) <= 60 and _plain(value):
        return [f'{param}="{value}"']
    chunks, current, room = [], "", 50  # the first section also carries utf-8''
    for char in value:
        encoded = quote(char, safe="", encoding="utf-8")
        if current and len(current) + len(encoded) > room:
            chunks.append(current)
            current, room = "", 60
        current += encoded
    chunks.append(current)
    if len(chunks) == 1:
        return [f"{param}*=utf-8''{chunks[0]}"]
    chunks[0] = "utf-8''" + chunks[0]
    return [f"{param}*{i}*={chunk}" for i, chunk in enumerate(chunks)]


def _with_params(head: str, params: list[str]) -> str:
    if len(params) == 1 and len(head) + 2 + len(params[0]) <= 78:
        return f"{head}; {params[0]}"
    return head + ";" + CRLF + " " + (";" + CRLF + " ").join(params)


def _attachment_part(a: Attachment) -> tuple[list[str], bytes]:
    disposition = "inline" if a.inline else "attachment"
    f = a.filename
    if len(f) <= 34 and len(f) + len(a.content_type) <= 55 and _plain(f):
        headers = [  # the usual case: each on one line of at most 78
            f'Content-Type: {a.content_type}; name="{f}"',
            "Content-Transfer-Encoding: base64",
            f'Content-Disposition: {disposition}; filename="{f}"',
        ]
    else:
        headers = [
            _with_params(f"Content-Type: {a.content_type}", _param_lines("name", f)),
            "Content-Transfer-Encoding: base64",
            _with_params(f"Content-Disposition: {disposition}", _param_lines("filename", f)),
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
def header_date(second: int) -> str:
    """A Date / Received date; one per second is made (formatdate takes microseconds)."""
    return formatdate(second, localtime=False)


def compose(d: Draft) -> bytes:
    """The message as bytes ready to store and send."""
    head = [
        f"From: {address_list((d.sender,), 'From')}",
        f"Date: {header_date(int(d.date))}",
        f"Message-ID: {d.message_id}",
    ]
    if d.to:
        head.append(f"To: {address_list(d.to, 'To')}")
    if d.cc:
        head.append(f"Cc: {address_list(d.cc, 'Cc')}")
    if d.reply_to:
        head.append(f"Reply-To: {address_list(d.reply_to, 'Reply-To')}")
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
    # UTF-8 only where an address has a UTF-8 local part (RFC 6532); else all ASCII.
    return (CRLF.join(head) + CRLF + CRLF).encode("utf-8") + body
