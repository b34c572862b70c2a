"""compose: the lean composer, checked against the standard `email` package as oracle."""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.header import decode_header, make_header
from email.utils import getaddresses

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.compose import Attachment, Draft, compose

printable = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85"),
    max_size=120,
)
# Long values: words of any script, some longer than a line, up to the API's limits.
long_text = st.lists(
    st.text(
        st.characters(
            blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="\x85"
        ),
        min_size=1,
        max_size=120,
    ),
    min_size=1,
    max_size=30,
).map(" ".join)
body_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=3000
)
# Runs of spaces and tabs (some longer than a line can hold) and long unbroken tokens
# (ASCII and not), between words: whitespace a fold cannot split without a blank line.
whitespace_runs = st.builds(
    lambda unit, n: (unit * n)[:n],
    st.sampled_from([" ", "\t", " \t", "  \t "]),
    st.one_of(st.integers(1, 80), st.integers(900, 3100)),
)
ascii_words = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
long_tokens = st.builds(
    lambda unit, n: (unit * n)[:n],
    st.sampled_from(["a", "xyz-", "https://example.org/", "=?", "é", "中文"]),
    st.one_of(st.integers(60, 120), st.integers(950, 3100)),
)
ascii_spaced_text = st.builds(  # a word first: leading whitespace is always encoded
    lambda first, rest: first + "".join(rest),
    ascii_words.filter(bool),
    st.lists(st.one_of(whitespace_runs, ascii_words, long_tokens.filter(str.isascii)), max_size=6),
)
spaced_text = st.lists(
    st.one_of(  # mostly ASCII: one non-ASCII character sends the whole value encoded
        ascii_words,
        whitespace_runs,
        ascii_words,
        whitespace_runs,
        long_tokens,
        st.text(st.characters(blacklist_categories=("Cs", "Cc", "Z")), min_size=1, max_size=20),
    ),
    min_size=1,
    max_size=6,
).map("".join)


def at_most(size: int, text: st.SearchStrategy[str] = spaced_text) -> st.SearchStrategy[str]:
    """Text cut to an API limit, ending in a word (a run of spaces cut short before it is
    the case that once made a line over 998)."""
    return text.map(lambda s: s if len(s) <= size else s[: size - 1] + "y")


names = st.one_of(
    st.just(""),
    printable.map(str.strip),
    long_text.map(lambda s: s[:320].strip()),
    at_most(320).map(str.strip),
)
ascii_local = st.from_regex(r"[a-z0-9][a-z0-9.+_-]{0,20}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
utf8_local = st.text(st.sampled_from("aéüßøñçжюλ中文b1"), min_size=1, max_size=20)
labels = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
    st.sampled_from(["bücher", "münchen", "日本語", "пример", "straße"]),
)
addresses = st.builds(
    lambda lp, d: f"{lp}@{d}.test", st.one_of(ascii_local, ascii_local, utf8_local), labels
)
mailboxes = st.tuples(names, addresses)
subjects = st.one_of(printable, long_text.map(lambda s: s[:998]), at_most(998))
header_values = st.one_of(subjects, at_most(16384))  # the HTTP API's limits
filenames = st.one_of(
    printable.map(str.strip).filter(bool), long_text.map(lambda s: s[:255].strip()).filter(bool)
)


ENCODED_WORD = re.compile(rb"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")
WSP = re.compile(rb"[ \t]")

content_types = st.sampled_from(
    ["application/octet-stream", "image/png", "application/vnd.openxmlformats-officedocument.sheet"]
)


def in_header(address: str) -> str:
    """The oracle's own A-label conversion (the idna package, IDNA 2008) of the domain."""
    local, _, domain = address.rpartition("@")
    labels = (x if x.isascii() else idna.alabel(x).decode() for x in domain.split("."))
    return f"{local}@{'.'.join(labels)}"


def parse(raw: bytes) -> email.message.EmailMessage:
    if raw.isascii():
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    else:  # RFC 6532 UTF-8 headers: the bytes parser would surrogate-escape them
        msg = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def display_names(raw: bytes, field: str) -> list[str]:
    """Display names decoded as RFC 2047 6.2 says (whitespace between adjacent encoded
    words is dropped). policy.default's phrase parser keeps that whitespace, so it cannot
    judge a name split over several words (its own generator's output fails it too)."""
    msg = email.message_from_string(raw.decode("utf-8"), policy=email.policy.compat32)
    out = []
    for name, _ in getaddresses(msg.get_all(field, [])):
        out.append(str(make_header(decode_header(name))) if "=?" in name else name)
    return out


def header_lines(raw: bytes) -> list[bytes]:
    """Every line of the top header block and of each MIME part's header block."""
    out, in_head = [], True
    for line in raw.split(b"\r\n"):
        if in_head:
            if line == b"":
                in_head = False
            else:
                out.append(line)
        elif line.startswith(b"--=_mg_") and not line.endswith(b"--"):
            in_head = True
    return out


def check_lines(raw: bytes) -> None:
    assert b"\r\n" in raw
    assert raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n"), "bare CR or LF"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    for line in header_lines(raw):
        # RFC 5322 2.1.1: 78 where possible; only an unbreakable ASCII token (with the
        # whitespace no fold can split off without a blank line) may pass it
        token = line.split(b": ", 1)[-1].strip(b" \t")
        assert len(line) <= 78 or (not WSP.search(token) and token.isascii()), line
    assert all(len(word) <= 75 for word in ENCODED_WORD.findall(raw))  # RFC 2047 2


@settings(max_examples=150, deadline=None)
@given(
    sender=mailboxes,
    to=st.lists(mailboxes, min_size=1, max_size=4),
    cc=st.lists(mailboxes, max_size=2),
    subject=subjects,
    custom=st.lists(
        st.tuples(st.sampled_from(["X-A", "X-Long-Custom-Header-Name"]), header_values),
        max_size=2,
    ),
    text=st.none() | body_text,
    html=st.none() | body_text,
    files=st.lists(
        st.tuples(filenames, st.binary(max_size=2000), st.booleans(), content_types), max_size=3
    ),
)
def test_compose_round_trips_through_the_email_package(
    sender, to, cc, subject, custom, text, html, files
) -> None:  # type: ignore[no-untyped-def]
    attachments = tuple(
        Attachment(
            name,
            content,
            ctype,
            content_id=f"c{i}@x" if inline else None,
            inline=inline,
        )
        for i, (name, content, inline, ctype) in enumerate(files)
    )
    custom = list(dict(custom).items())
    draft = Draft(
        sender=sender,
        to=tuple(to),
        cc=tuple(cc),
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        headers=tuple(custom),
        message_id="<id@mailgate.test>",
        date=time.time(),
        in_reply_to="<p@x>",
        references=("<a@x>", "<p@x>"),
    )
    raw = compose(draft)
    check_lines(raw)
    assert raw.isascii() == all(a.rpartition("@")[0].isascii() for _, a in [sender, *to, *cc])
    msg = parse(raw)
    assert msg["Subject"] == subject
    for name, value in custom:
        assert msg[name] == value
    assert msg["From"].addresses[0].addr_spec == in_header(sender[1])
    assert display_names(raw, "From") == [sender[0]]
    assert [a.addr_spec for a in msg["To"].addresses] == [in_header(a) for _, a in to]
    assert display_names(raw, "To") == [n for n, _ in to]
    if cc:
        assert [a.addr_spec for a in msg["Cc"].addresses] == [in_header(a) for _, a in cc]
        assert display_names(raw, "Cc") == [n for n, _ in cc]
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
        (p.get_filename(), p.get_param("name"), p.get_content())
        for p in msg.walk()
        if p.get_content_disposition() in ("attachment", "inline") and p.get_filename()
    ]
    ordered = [a for a in attachments if a.inline] + [a for a in attachments if not a.inline]
    # inline parts sit nearer the body
    assert got == [(a.filename, a.filename, a.content) for a in ordered]


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


def test_long_non_ascii_name_and_filename_fold_within_78() -> None:
    """Issue 11 #10: a 431-character encoded name and an unfolded RFC 2231 filename made
    lines over 998 octets (500 Line too long at the next hop)."""
    name = "Zoë Ångström-Müller " * 21
    filename = "résumé très long " * 15 + ".pdf"
    raw = compose(
        Draft(
            sender=(name.strip(), "zoe@example.org"),
            to=((name.strip(), "b@example.com"),),
            subject="Grüße " * 150,
            text="x",
            attachments=(Attachment(filename, b"pdf", "application/pdf"),),
            message_id="<m@x>",
        )
    )
    check_lines(raw)
    assert all(len(line) <= 78 for line in header_lines(raw))
    assert all(len(w) <= 75 for w in ENCODED_WORD.findall(raw))
    assert b"filename*0*=utf-8''r%C3%A9sum%C3%A9" in raw and b"filename*1*=" in raw
    msg = parse(raw)
    assert display_names(raw, "From") == [name.strip()]
    assert msg["Subject"] == "Grüße " * 150
    part = next(p for p in msg.walk() if p.get_filename())
    assert part.get_filename() == filename and part.get_content() == b"pdf"


def test_utf8_local_part_is_raw_and_idn_domain_is_an_a_label() -> None:
    """RFC 6532: a UTF-8 addr-spec goes in the header as UTF-8 (never an encoded word);
    a U-label domain goes as its A-label, the name the envelope's domain resolves to."""
    raw = compose(
        Draft(
            sender=("José", "josé@example.org"),
            to=(("", "b@bücher.example"),),
            text="x",
            message_id="<m@x>",
        )
    )
    check_lines(raw)
    assert "From: =?utf-8?b?Sm9zw6k=?= <josé@example.org>\r\n".encode() in raw
    assert b"\r\nTo: b@xn--bcher-kva.example\r\n" in raw
    msg = parse(raw)
    assert msg["From"].addresses[0].addr_spec == "josé@example.org"
    ascii_only = compose(Draft(sender=("", "a@bücher.example"), to=(("", "b@x.test"),)))
    assert ascii_only.isascii()  # a U-label domain alone keeps the message 7-bit


def test_text_that_reads_as_an_encoded_word_is_encoded() -> None:
    raw = compose(
        Draft(
            sender=("=?utf-8?q?x?=", "a@b.test"),
            to=(("", "c@d.test"),),
            subject="=?utf-8?q?hi?=",
            message_id="<m@x>",
        )
    )
    assert parse(raw)["Subject"] == "=?utf-8?q?hi?="
    assert display_names(raw, "From") == ["=?utf-8?q?x?="]


def header_draft(name: str, value: str) -> Draft:
    if name == "Subject":
        return Draft(sender=("", "a@b.test"), to=(("", "c@d.test"),), subject=value, text="x")
    return Draft(sender=("", "a@b.test"), to=(("", "c@d.test"),), headers=((name, value),))


@settings(max_examples=300, deadline=None)
@given(
    field=st.one_of(
        st.tuples(st.just("Subject"), at_most(998, ascii_spaced_text)),
        st.tuples(
            st.sampled_from(["X-A", "X-" + "N" * 74]),
            st.one_of(at_most(998, ascii_spaced_text), at_most(16384, ascii_spaced_text)),
        ),
    )
)
def test_any_header_text_folds_within_998(field: tuple[str, str]) -> None:
    """Issue 11 review: runs of spaces or tabs and unbroken tokens, at any length up to the
    API's limits, fold within 998 octets (78 where whitespace allows) or are encoded, and
    read back as given."""
    name, value = field
    raw = compose(header_draft(name, value))
    check_lines(raw)
    assert parse(raw)[name] == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Subject", "x" + " " * 996 + "y"),
        ("X-Note", "x" + " " * 3000 + "y"),
        ("X-Note", "x" + "\t" * 995 + "y"),
        ("Subject", "a" * 998),
        ("X-Note", "a" * 3000),
        ("X-Note", "word " + "a" * 16000 + " end"),
        ("X-Note", ("x" + " " * 50) * 300 + "y"),
    ],
    ids=[
        "subject-spaces",
        "header-spaces",
        "header-tabs",
        "subject-token",
        "header-token",
        "header-token-16k",
        "many-runs",
    ],
)
def test_runs_of_spaces_and_long_tokens_stay_within_998(name: str, value: str) -> None:
    """A run of 996 spaces in a Subject made a 1005-octet line (empty words never folded):
    202, then `500 Line too long` at the next hop. What cannot fold within 998 is encoded."""
    raw = compose(header_draft(name, value))
    check_lines(raw)
    assert parse(raw)[name] == value


def test_a_short_run_of_spaces_folds_inside_the_run() -> None:
    """The spaces that fit stay on the line; the rest start the next one (no blank line)."""
    value = "x" + " " * 200 + "y"
    raw = compose(header_draft("Subject", value))
    assert f"Subject: x{' ' * 68}\r\n{' ' * 132}y\r\n".encode() in raw
    assert parse(raw)["Subject"] == value
