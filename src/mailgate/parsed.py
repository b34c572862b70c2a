"""A stored message read as an application (or a developer looking at captured mail)
wants it: the addresses, the text and HTML bodies and the attachments' names, types and
sizes. Pure: bytes in, values out. The stdlib parser in its modern policy does the MIME
work; what it cannot read (a body nested past any sense, bytes it refuses) is a
`ParseError`, never a crash of the caller.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from typing import Any

MAX_DEPTH = 20  # multipart nesting followed; deeper parts are not looked into


class ParseError(Exception):
    pass


def parse(raw: bytes) -> EmailMessage:
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
    except Exception as exc:  # the parser's own errors are not one type
        raise ParseError(str(exc)) from exc
    assert isinstance(message, EmailMessage)
    return message


def _walk(part: MIMEPart, depth: int = 0) -> list[MIMEPart]:
    """The leaf parts in order, not deeper than MAX_DEPTH."""
    if not part.is_multipart():
        return [part]
    if depth >= MAX_DEPTH:
        return []
    leaves: list[MIMEPart] = []
    for child in part.iter_parts():
        leaves.extend(_walk(child, depth + 1))
    return leaves


def _text(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except Exception:  # an unknown charset or broken encoding: keep what can be read
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else content.decode("utf-8", "replace")


def _bytes(part: MIMEPart) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def bodies_and_parts(message: EmailMessage) -> tuple[str | None, str | None, list[MIMEPart]]:
    """(the first text/plain body, the first text/html body, every other leaf part)."""
    text = html = None
    parts: list[MIMEPart] = []
    for leaf in _walk(message):
        kind = leaf.get_content_type()
        attached = leaf.get_content_disposition() == "attachment" or leaf.get_filename()
        if kind == "text/plain" and text is None and not attached:
            text = _text(leaf)
        elif kind == "text/html" and html is None and not attached:
            html = _text(leaf)
        else:
            parts.append(leaf)
    return text, html, parts


def describe(raw: bytes) -> dict[str, Any]:
    """The parsed view of a message (the API's /parsed)."""
    message = parse(raw)
    try:
        text, html, parts = bodies_and_parts(message)
        return {
            "subject": _header(message, "subject"),
            "from": _header(message, "from"),
            "to": _header(message, "to"),
            "cc": _header(message, "cc"),
            "reply_to": _header(message, "reply-to"),
            "date": _header(message, "date"),
            "message_id": _header(message, "message-id"),
            "headers": [{"name": k, "value": str(v)} for k, v in message.items()],
            "text": text,
            "html": html,
            "attachments": [_part(i, p) for i, p in enumerate(parts)],
        }
    except ParseError:
        raise
    except Exception as exc:  # a header or part the parser chokes on
        raise ParseError(str(exc)) from exc


def _header(message: EmailMessage, name: str) -> str | None:
    value = message.get(name)
    return None if value is None else str(value)


def _part(index: int, part: MIMEPart) -> dict[str, Any]:
    cid = part.get("content-id")
    return {
        "index": index,
        "filename": part.get_filename(),
        "content_type": part.get_content_type(),
        "size": len(_bytes(part)),
        "content_id": str(cid).strip("<> ") if cid else None,
        "inline": part.get_content_disposition() == "inline",
    }


def attachment(raw: bytes, index: int) -> tuple[str | None, str, bytes] | None:
    """(filename, content type, decoded bytes) of attachment `index`, or None."""
    message = parse(raw)
    try:
        _, _, parts = bodies_and_parts(message)
        if not 0 <= index < len(parts):
            return None
        part = parts[index]
        return part.get_filename(), part.get_content_type(), _bytes(part)
    except Exception as exc:  # a part the parser chokes on
        raise ParseError(str(exc)) from exc
