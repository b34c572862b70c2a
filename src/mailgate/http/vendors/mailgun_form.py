"""Mailgun's request bodies as a list of named parts, keys repeated and in the order sent:
application/x-www-form-urlencoded (as the stdlib's parse_qsl reads it) or multipart/form-data
(python-multipart's parser, the one Starlette uses, fed the body `Send` already read
within its size limit: no temporary files).

Pure: bytes in, `Form` or `FormError` (one line naming what is wrong) out.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
MAX_PARTS = 1000  # fields and files in one request: far past any real send


class FormError(Exception):
    """A body that is not a well-formed form; the message says where."""


@dataclass(frozen=True, slots=True)
class File:
    name: str  # the form key: attachment, inline, message
    filename: str
    content_type: str | None  # the part's own Content-Type, when it has one
    data: bytes


@dataclass(frozen=True, slots=True)
class Form:
    fields: list[tuple[str, str]]  # (key, value), repeated keys kept, in order
    files: list[File]

    def fingerprint(self) -> bytes:
        """The form as Idempotency-Key compares it: a multipart body's boundary is new on
        every send (a retry too), its parts are not."""
        files = [
            (f.name, f.filename, f.content_type, hashlib.sha256(f.data).hexdigest())
            for f in self.files
        ]
        return json.dumps([self.fields, files]).encode()


def parse_form(body: bytes, content_type: str) -> Form:
    """The form in `body`, whose Content-Type header is `content_type`."""
    media_type, params = parse_options_header(content_type)
    if media_type.decode("latin-1") == MULTIPART:
        boundary = params.get(b"boundary")
        if not boundary:
            raise FormError("multipart/form-data without a boundary")
        return parse_multipart(body, boundary)
    return parse_urlencoded(body)


def parse_urlencoded(body: bytes) -> Form:
    """What the stdlib's parse_qsl(keep_blank_values=True, errors="strict") gives, a
    third faster: each part unquoted as bytes and decoded once (a body that is UTF-8
    decodes the same either way, tests/vendors/test_mailgun_form.py)."""
    if body.count(b"&") >= MAX_PARTS:
        raise FormError(f"More than {MAX_PARTS} parameters")
    try:
        body.decode("utf-8")  # a raw byte that escapes complete could not hide
        return Form([_pair(part) for part in body.split(b"&") if part], [])
    except UnicodeDecodeError:
        raise FormError("The form is not UTF-8") from None


def _pair(part: bytes) -> tuple[str, str]:
    name, _, value = part.partition(b"=")
    return _unquoted(name), _unquoted(value)


def _unquoted(data: bytes) -> str:
    """The value with + as space and its %XX escapes decoded. Each %XX is rewritten as
    \\xXX (backslashes doubled first) for the C escape decoder pickle uses: a third of
    the time of unquote_to_bytes, which goes escape by escape in Python (a 2 KB text has
    dozens). A % that starts no escape makes the decoder refuse: the stdlib reads it."""
    data = data.replace(b"+", b" ")
    if b"%" not in data:
        return data.decode("utf-8")
    escaped = data.replace(b"\\", b"\\\\").replace(b"%", b"\\x")
    try:
        decoded: bytes = codecs.escape_decode(escaped)[0]
    except ValueError:
        decoded = unquote_to_bytes(data)
    return decoded.decode("utf-8")


def parse_multipart(body: bytes, boundary: bytes) -> Form:
    collector = _Parts()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise FormError(f"Malformed multipart/form-data: {exc}") from None
    if not collector.ended:  # a truncated body would lose its last part unnoticed
        raise FormError("The multipart/form-data body ends before its closing boundary")
    return Form(collector.fields, collector.files)


class _Parts:
    """python-multipart's callbacks, collecting each part's headers and bytes."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.files: list[File] = []
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""
        self._data = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        if len(self.fields) + len(self.files) >= MAX_PARTS:
            raise FormError(f"More than {MAX_PARTS} parts")
        self._headers, self._data = {}, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def _part_end(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise FormError("A part has no Content-Disposition: form-data; name=...")
        name = _text(params[b"name"], "A part's name")
        if b"filename" not in params:
            self.fields.append((name, _text(bytes(self._data), f"'{name}' parameter")))
            return
        content_type = self._headers.get(b"content-type")
        self.files.append(
            File(
                name,
                _text(params[b"filename"], f"The filename of '{name}'"),
                _text(content_type, f"The Content-Type of '{name}'") if content_type else None,
                bytes(self._data),
            )
        )

    def _end(self) -> None:
        self.ended = True


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"{what} is not UTF-8") from None
