"""envelope.py reads messages with compat32 and the package's encoders, for speed; the
oracle is the `email` package's policy.default reading of the same bytes (get_body,
iter_attachments, header objects): generated messages, every field compared."""

from __future__ import annotations

import email.utils
import html
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.mailboxes import envelope
from mailgate.mailboxes.models import Participant

_SPACE = re.compile(r"\s+")
_TAGS = re.compile(r"<(style|script)\b.*?</\1>|<[^>]+>", re.S | re.I)


def oracle(raw: bytes) -> dict[str, object]:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)

    def text(name: str) -> str:
        v = msg.get(name)
        return "" if v is None else _SPACE.sub(" ", str(v)).strip()

    def people(name: str) -> tuple[Participant, ...]:
        pairs = email.utils.getaddresses([str(v) for v in msg.get_all(name) or []])
        return tuple(Participant(a, d) for d, a in pairs if a and "@" in a)

    body = msg.get_body(("plain", "html"))
    snippet = ""
    if body is not None:
        try:
            content = body.get_content()
        except LookupError:
            content = ""
        if body.get_content_subtype() == "html":
            content = html.unescape(_TAGS.sub(" ", content))
        snippet = _SPACE.sub(" ", content).strip()[:200]
    return {
        "subject": text("subject"),
        "from": people("from"),
        "to": people("to"),
        "cc": people("cc"),
        "date": email.utils.parsedate_to_datetime(text("date")).timestamp(),
        "snippet": snippet,
        "attachments": any(True for _ in msg.iter_attachments()),
    }


words = st.text(
    st.characters(whitelist_categories=("Lu", "Ll", "Nd", "Zs", "Po"), max_codepoint=0x2FFF),
    min_size=1,
    max_size=40,
).map(lambda s: _SPACE.sub(" ", s).strip() or "x")
names = st.one_of(st.just(""), words.filter(lambda s: not set(s) & set('"\\')))
addresses = st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.example", fullmatch=True)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    m = EmailMessage()
    m["Subject"] = draw(words)
    m["From"] = email.utils.formataddr((draw(names), draw(addresses)))
    m["To"] = ", ".join(
        email.utils.formataddr((draw(names), a))
        for a in draw(st.lists(addresses, min_size=1, max_size=3))
    )
    if draw(st.booleans()):
        m["Cc"] = draw(addresses)
    m["Date"] = email.utils.formatdate(draw(st.integers(0, 2_000_000_000)))
    m["Message-ID"] = f"<{draw(st.integers(0, 10**9))}@gen.example>"
    shape = draw(st.sampled_from(["plain", "html", "alternative", "mixed", "related"]))
    text_body = draw(words) + "\n" + draw(words)
    charset_body = draw(st.sampled_from(["utf-8", None]))
    if shape in ("plain", "mixed"):
        m.set_content(text_body, charset=charset_body or "utf-8")
    elif shape == "html":
        m.set_content(f"<p>{html.escape(text_body)}</p>", subtype="html")
    else:
        m.set_content(text_body)
        m.add_alternative(f"<b>{html.escape(text_body)}</b>", subtype="html")
    if shape == "related":
        m.get_payload()[1].add_related(b"\x89PNG...", "image", "png", cid="<img1@gen>")
    if shape == "mixed" or draw(st.booleans()):
        m.add_attachment(
            draw(st.binary(max_size=50)), "application", "octet-stream", filename="f.bin"
        )
    if draw(st.booleans()):
        m.add_attachment(draw(words), filename="note.txt")
    for i, part in enumerate(m.walk()):  # the package would draw them from `random`
        if part.is_multipart():
            part.set_boundary(f"==gen-boundary-{i}==")
    return m.as_bytes(policy=policy.SMTP)


@settings(max_examples=300, deadline=None)
@given(messages())
def test_envelope_reads_as_the_email_package_does(raw: bytes) -> None:
    got = envelope.read(
        raw, grant_id="g", folder_id="f", uid=1, flags=(), size=len(raw), received=0.0
    )
    want = oracle(raw)
    assert got.subject == want["subject"]
    assert got.from_ == want["from"]
    assert got.to == want["to"]
    assert got.cc == want["cc"]
    assert got.date == want["date"]
    assert got.snippet == want["snippet"]
    assert got.has_attachments == want["attachments"]


def test_headers_the_fast_path_must_decode() -> None:
    raw = (
        b"From: =?utf-8?q?Jos=C3=A9_P=C3=A9rez?= <jose@example.es>\r\n"
        b"To: undisclosed-recipients:;\r\n"
        b"Subject: =?iso-8859-1?q?R=E9sum=E9?= of the\r\n  week\r\n"
        b"Message-ID: <a@b>\r\nIn-Reply-To: <x@y> (comment)\r\n"
        b"References: <w@y>\r\n <x@y>\r\n"
        b"Content-Type: text/plain; charset=x-unknown\r\n\r\nbody\r\n"
    )
    m = envelope.read(
        raw, grant_id="g", folder_id="f", uid=1, flags=(b"\\Seen",), size=0, received=5.0
    )
    assert m.from_ == (Participant("jose@example.es", "José Pérez"),)
    assert m.to == ()
    assert m.subject == "Résumé of the week"
    assert (m.message_id_header, m.in_reply_to, m.references) == (
        "<a@b>",
        "<x@y>",
        ("<w@y>", "<x@y>"),
    )
    assert m.date == 5.0 and m.snippet == "" and not m.unread
