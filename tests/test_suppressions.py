"""The suppression rules, pure: which replies condemn an address (generated over every
class of reply), and which entries stop which message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailgate.models import NewMessage, Reply, Source
from mailgate.simulator import SIMULATOR_DOMAIN, simulate
from mailgate.suppressions import ADDRESS_CODES, condemns, hard_bounce, screen

texts = st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=80)
subjects = st.integers(0, 9).map(str)
details = st.integers(0, 20).map(str)


@given(st.sampled_from(sorted(ADDRESS_CODES)), st.sampled_from([550, 551, 553, 554]), texts)
def test_an_address_code_condemns_the_address_whatever_the_text(
    enhanced: str, code: int, text: str
) -> None:
    assert hard_bounce(Reply(code, enhanced, text))


@given(subjects, details, st.integers(500, 599), texts)
def test_other_enhanced_codes_never_do_whatever_the_text(
    subject: str, detail: str, code: int, text: str
) -> None:
    enhanced = f"5.{subject}.{detail}"
    if enhanced in ADDRESS_CODES:
        return
    # "no such user" in the text of a 5.7.1 is policy wording, not proof about the address
    assert not hard_bounce(Reply(code, enhanced, text + " no such user"))


@given(st.integers(200, 499), st.one_of(st.none(), st.sampled_from(sorted(ADDRESS_CODES))), texts)
def test_no_reply_below_500_condemns(code: int, enhanced: str | None, text: str) -> None:
    assert not hard_bounce(Reply(code, enhanced, text + " user unknown"))


def test_without_an_enhanced_code_the_text_decides() -> None:
    for text in (
        "No such user here",
        "User unknown",
        "mailbox does not exist",
        "Recipient address rejected: User unknown in local recipient table",
    ):
        assert hard_bounce(Reply(550, None, text)), text
    for text in (
        "Message rejected as spam",
        "Relay access denied",
        "Too big",
        "",
        "Requested action not taken: mailbox unavailable",  # RFC 5321's stock text: policy too
    ):
        assert not hard_bounce(Reply(550, None, text)), text
    assert not hard_bounce(Reply(552, None, "No such user")), "552 is about storage"
    assert not hard_bounce(None)


def message(recipients: tuple[str, ...], from_domain: str) -> NewMessage:
    return NewMessage(b"", "s@x.test", recipients, Source.HTTP, from_domain=from_domain)


@given(
    st.lists(st.sampled_from(["", "a.test", "b.test", "sub.a.test"]), min_size=1, max_size=4),
    st.sampled_from(["a.test", "sub.a.test", "b.test", "c.test", ""]),
)
def test_a_scoped_entry_stops_its_domain_and_subdomains_only(
    scopes: list[str], from_domain: str
) -> None:
    found = {"r@x.test": [(scope, "manual") for scope in scopes]}
    stopped = screen(message(("R@X.test", "other@x.test"), from_domain), found)
    applies = any(not s or from_domain == s or from_domain.endswith("." + s) for s in scopes)
    assert stopped == ({"R@X.test": "manual"} if applies else {})


def test_the_simulator_answers_by_local_part() -> None:
    at = f"@{SIMULATOR_DOMAIN}"
    assert simulate("Delivered" + at, 0).outcome.reply.code == 250
    assert simulate("bounced" + at, 0).outcome.reply.enhanced == "5.1.1"
    assert simulate("deferred" + at, 0).outcome.reply.code == 451
    assert simulate("deferred" + at, 1).outcome.reply.code == 250
    assert simulate("expired" + at, 0).expire
    assert simulate("complained" + at, 0).complaint
    captured = simulate("delivered@elsewhere.test", 0)
    assert (
        captured.outcome.reply.text.startswith("Captured") and captured.outcome.remote_host is None
    )


@given(st.sampled_from(sorted(ADDRESS_CODES)), texts)
def test_only_a_reply_to_rcpt_or_a_null_mx_condemns(enhanced: str, text: str) -> None:
    reply = Reply(550, enhanced, text)
    assert condemns(reply, at_rcpt=True, local=False)
    assert not condemns(reply, at_rcpt=False, local=False), "MAIL, DATA, the final dot"
    assert condemns(reply, at_rcpt=False, local=True) is (enhanced == "5.1.10")
