"""compose: the lean composer, checked against the standard `email` package as oracle."""

from __future__ import annotations

import email
import email.policy
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.compose import Attachment, Draft, compose

printable = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85"),
    max_size=120,
)
body_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=3000
)
names = st.one_of(st.just(""), printable.map(str.strip))
local = st.from_regex(r"[a-z0-9][a-z0-9.+_-]{0,20}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
addresses = st.builds(
    lambda lp, d: f"{lp}@{d}.test",
    local,
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
)
mailboxes = st.tuples(names, addresses)


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def check_lines(raw: bytes) -> None:
    assert b"\r\n" in raw
    assert raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n"), "bare CR or LF"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@settings(max_examples=60, deadline=None)
@given(
    sender=mailboxes,
    to=st.lists(mailboxes, min_size=1, max_size=4),
    cc=st.lists(mailboxes, max_size=2),
    subject=printable,
    text=st.none() | body_text,
    html=st.none() | body_text,
    files=st.lists(
        st.tuples(
            printable.filter(lambda s: s.strip() != ""), st.binary(max_size=2000), st.booleans()
        ),
        max_size=3,
    ),
)
def test_compose_round_trips_through_the_email_package(
    sender, to, cc, subject, text, html, files
) -> None:  # type: ignore[no-untyped-def]
    attachments = tuple(
        Attachment(
            name.strip(),
            content,
            "application/octet-stream",
            content_id=f"c{i}@x" if inline else None,
            inline=inline,
        )
        for i, (name, content, inline) in enumerate(files)
    )
    draft = Draft(
        sender=sender,
        to=tuple(to),
        cc=tuple(cc),
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        message_id="<id@mailgate.test>",
        date=time.time(),
        in_reply_to="<p@x>",
        references=("<a@x>", "<p@x>"),
    )
    raw = compose(draft)
    check_lines(raw)
    msg = parse(raw)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].addr_spec == sender[1]
    assert msg["From"].addresses[0].display_name == sender[0]
    assert [a.addr_spec for a in msg["To"].addresses] == [a for _, a in to]
    assert [a.display_name for a in msg["To"].addresses] == [n for n, _ in to]
    if cc:
        assert [a.addr_spec for a in msg["Cc"].addresses] == [a for _, a in cc]
    assert msg["Message-ID"] == "<id@mailgate.test>"
    assert msg["In-Reply-To"] == "<p@x>" and msg["References"].split() == ["<a@x>", "<p@x>"]

    def norm(s: str) -> str:
        return s.replace("\r\n", "\n").replace("\r", "\n")

    plain = msg.get_body(("plain",))
    if text is not None:
        assert plain is not None and norm(plain.get_content()).rstrip("\n") == norm(text).rstrip(
            "\n"
        )
    if html is not None:
        part = msg.get_body(("html",))
        assert part is not None and norm(part.get_content()).rstrip("\n") == norm(html).rstrip("\n")
    got = [
        (p.get_filename(), p.get_content())
        for p in msg.walk()
        if p.get_content_disposition() in ("attachment", "inline") and p.get_filename()
    ]
    ordered = [a for a in attachments if a.inline] + [a for a in attachments if not a.inline]
    assert got == [(a.filename, a.content) for a in ordered]  # inline parts sit nearer the body


def test_long_ascii_subject_is_folded_not_cut() -> None:
    subject = " ".join(["word"] * 400)
    raw = compose(
        Draft(
            sender=("", "a@b.test"),
            to=(("", "c@d.test"),),
            subject=subject,
            text="x",
            message_id="<m@x>",
        )
    )
    check_lines(raw)
    assert parse(raw)["Subject"] == subject


def test_unbroken_long_line_in_text_uses_quoted_printable() -> None:
    raw = compose(
        Draft(sender=("", "a@b.test"), to=(("", "c@d.test"),), text="y" * 5000, message_id="<m@x>")
    )
    check_lines(raw)
    part = parse(raw).get_body(("plain",))
    assert part is not None and part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_content().rstrip("\r\n") == "y" * 5000


@settings(max_examples=80, deadline=None)
@given(
    text=st.lists(
        st.text(st.sampled_from("ab =.\t" + "xyz" * 5), min_size=0, max_size=2500),
        min_size=1,
        max_size=3,
    ).map("\n".join)
)
def test_long_printable_lines_round_trip_through_quoted_printable(text: str) -> None:
    """The quoted-printable fast path (printable ASCII, soft breaks only) and the general
    path it falls back to ('=', whitespace at a line's end) both decode to the text."""
    raw = compose(Draft(sender=("", "a@b.test"), to=(("", "c@d.test"),), text=text))
    check_lines(raw)
    part = parse(raw).get_body(("plain",))
    assert part is not None
    assert part.get_content().replace("\r\n", "\n").rstrip("\n") == text.rstrip("\n")
    if part["Content-Transfer-Encoding"] == "quoted-printable":  # RFC 2045 6.7 (5)
        body = raw.split(b"\r\n\r\n", 1)[1]
        assert max(len(line) for line in body.split(b"\r\n")) <= 76
