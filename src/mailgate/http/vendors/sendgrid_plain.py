"""The plain SendGrid send read in one pass: what the SDK's `Mail(from, to, subject,
content)` sends (one personalization of to/cc/bcc and maybe a subject, a from, a subject,
text and/or html content) as the fields of mailgate's SendRequest, without first
validating SendGrid's whole shape (sendgrid_body.SgMail). Pure.

Anything else, and anything this reading is unsure of, is None: the request is read the
long way, which names every refused field in SendGrid's words. For the requests it takes,
the fields are the ones the long way makes (tests/vendors/test_sendgrid_plain.py).
"""

from __future__ import annotations

from typing import Any

import pydantic_core

from mailgate.addresses import address_problem
from mailgate.http.vendors.sendgrid_body import CONTENT_TYPES, mailbox_text

TOP = frozenset({"personalizations", "from", "subject", "content"})
PERSONAL = frozenset({"to", "cc", "bcc", "subject"})
EMAIL = frozenset({"email", "name"})
CONTENT = frozenset({"type", "value"})


def plain_fields(body: bytes, max_recipients: int) -> dict[str, Any] | None:
    """The SendRequest fields of a plain send, or None (read it the long way)."""
    try:
        mail = pydantic_core.from_json(body)
    except ValueError:
        return None
    if type(mail) is not dict or not mail.keys() <= TOP:
        return None
    people, content = mail.get("personalizations"), mail.get("content")
    if type(people) is not list or len(people) != 1 or type(content) is not list:
        return None
    [p] = people
    if type(p) is not dict or not p.keys() <= PERSONAL:
        return None
    lists = {kind: p[kind] for kind in ("to", "cc", "bcc") if kind in p}
    if any(type(given) is not list for given in lists.values()):
        return None
    # the cap before any address is parsed: refused the long way, naming the field
    if sum(map(len, lists.values())) > max_recipients:
        return None
    sender = mailbox(mail.get("from"))
    if sender is None:
        return None
    fields: dict[str, Any] = {"from": sender}
    for kind, given in lists.items():
        found = [mailbox(e) for e in given]
        if None in found:
            return None
        if found:
            fields[kind] = found
    own, shared = p.get("subject"), mail.get("subject")
    if not (own is None or type(own) is str) or not (shared is None or type(shared) is str):
        return None
    subject = own if own is not None else shared
    if subject is not None:
        fields["subject"] = subject
    for c in content:
        if type(c) is not dict or c.keys() != CONTENT:
            return None
        given, value = c["type"], c["value"]
        part = CONTENT_TYPES.get(given) if type(given) is str else None
        if part is None or part in fields or type(value) is not str:
            return None
        fields[part] = value
    return fields


def mailbox(e: object) -> str | None:
    """A SendGrid email object as a mailbox, or None when it is not a plain valid one."""
    if type(e) is not dict or "email" not in e or not e.keys() <= EMAIL:
        return None
    email, name = e["email"], e.get("name")
    if type(email) is not str or (name is not None and type(name) is not str):
        return None
    if address_problem(email) is not None:
        return None
    return mailbox_text(email, name)
