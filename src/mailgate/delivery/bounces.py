"""Delivery status notifications (RFC 3464): the bounce message for a sender.

The remote reply quoted in a DSN is the receiver's text, UTF-8 and as long as it likes:
every line it goes into is cut to LINE_LIMIT octets at a character boundary, since a
line past RFC 5322's 998 gets the DSN refused, and a DSN that fails is never reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from email.utils import formatdate

from mailgate.models import Reply, new_id

LINE_LIMIT = 998  # octets, without the CRLF (RFC 5322 2.1.1)


@dataclass(frozen=True, slots=True)
class Failure:
    recipient: str
    status: str  # RFC 3463 code, e.g. 5.1.1 (4.4.7 for an expiry)
    reply: Reply | None
    remote_host: str | None
    expired: bool = False


def original_headers(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw[: end + 2] if end >= 0 else raw


def build_dsn(
    original_raw: bytes,
    original_sender: str,
    failures: list[Failure],
    hostname: str,
    arrival: float,
    now: float,
) -> bytes:
    """A multipart/report DSN addressed to original_sender; sent with MAIL FROM:<>."""
    boundary = "=_dsn_" + os.urandom(8).hex()
    lines = "\r\n".join(fit(f"<{f.recipient}>: {_diagnostic(f)}") for f in failures)
    human = (
        f"This is the mail system at {hostname}.\r\n\r\n"
        "Your message could not be delivered to one or more recipients.\r\n"
        "The details are below; the headers of your message are attached.\r\n\r\n"
        f"{lines}\r\n"
    )
    per_recipient = []
    for f in failures:
        block = [f"Final-Recipient: rfc822; {f.recipient}", "Action: failed", f"Status: {f.status}"]
        if f.remote_host:
            block.append(f"Remote-MTA: dns; {f.remote_host}")
        if f.reply is not None:
            block.append(f"Diagnostic-Code: smtp; {_reply_text(f.reply)}")
        block.append(f"Last-Attempt-Date: {formatdate(now)}")
        per_recipient.append("\r\n".join(map(fit, block)))
    status = "\r\n\r\n".join(
        [f"Reporting-MTA: dns; {hostname}\r\nArrival-Date: {formatdate(arrival)}", *per_recipient]
    )
    head = "\r\n".join(
        [
            f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
            f"To: <{original_sender}>",
            "Subject: Undelivered Mail Returned to Sender",
            f"Date: {formatdate(now)}",
            f"Message-ID: <{new_id(now)}.dsn@{hostname}>",
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ]
    )
    parts = [
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + human,
        "Content-Type: message/delivery-status\r\n\r\n" + status + "\r\n",
        "Content-Type: text/rfc822-headers\r\n\r\n",
    ]
    body = b""
    for i, part in enumerate(parts):
        body += f"--{boundary}\r\n{part}".encode()
        if i == 2:
            body += original_headers(original_raw)
    body += f"--{boundary}--\r\n".encode()
    return head.encode("utf-8") + b"\r\n\r\n" + body


def fit(line: str, limit: int = LINE_LIMIT) -> str:
    """The line cut to `limit` UTF-8 octets, at a character boundary, marked by '...'."""
    octets = line.encode()
    if len(octets) <= limit:
        return line
    return octets[: limit - 3].decode("utf-8", "ignore") + "..."


def _reply_text(reply: Reply) -> str:
    text = " ".join(reply.text.split())
    return f"{reply.code} {reply.enhanced + ' ' if reply.enhanced else ''}{text}"


def _diagnostic(f: Failure) -> str:
    if f.expired:
        return "gave up after the queue lifetime" + (
            f"; last reply: {_reply_text(f.reply)}" if f.reply else ""
        )
    return _reply_text(f.reply) if f.reply else f.status
