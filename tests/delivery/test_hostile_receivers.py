"""Hostile and broken receivers (issue 11, findings 4, 6 and 11): a reply counts only for
the command it answers, only a 2xx after the final dot delivers, injected plaintext after
STARTTLS is never read as a TLS reply, and SMTPUTF8 is used exactly when the peer offers
it. Each story runs smtp_client.Session against a scripted receiver on loopback; the last
ones go through the Deliverer and the store."""

from __future__ import annotations

import ssl

import pytest
import trustme

from mailgate.delivery.outcome import Outcome, Verdict
from mailgate.delivery.smtp_client import Transaction
from mailgate.models import RecipientStatus, Source
from tests.delivery.conftest import World
from tests.delivery.hostile_receiver import CLOSE, HostileReceiver, Plan, Say

RAW = b"From: s@origin.test\r\nSubject: hi\r\n\r\nhello\r\n.leading dot\r\n"
NO_PIPELINING = ("8BITMIME",)
CA = trustme.CA()


def tx(*rcpts: str, sender: str = "s@origin.test", raw: bytes = RAW) -> Transaction:
    return Transaction(sender, rcpts or ("a@dest.test",), raw)


async def deliver(rx: HostileReceiver, t: Transaction, **cfg: object) -> dict[str, Outcome]:
    """open + send as the worker does; a failed open is every recipient's outcome."""
    session = rx.session(**cfg)
    problem = await session.open()
    if problem is not None:
        await session.close()
        return dict.fromkeys(t.recipients, problem)
    result = await session.send(t)
    await session.close()
    return result if isinstance(result, dict) else dict.fromkeys(t.recipients, result)


def protocol_error(outcome: Outcome) -> bool:
    return outcome.verdict is Verdict.TEMPORARY and (
        outcome.reply.code,
        outcome.reply.enhanced,
    ) == (
        451,
        "4.5.0",
    )


def server_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("mx.hostile.test").configure_cert(ctx)
    return ctx


# -- finding 4: a stray 2xx is not a delivery -----------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(Plan(greeting=Say(250, "hostile.test")), id="greeting-250"),
        pytest.param(
            Plan(greeting=Say(220, "hostile.test", extra=b"220 hostile.test again\r\n")),
            id="double-greeting-one-write",
        ),
        pytest.param(Plan(ehlo=Say(220, "hostile.test again")), id="second-220-as-ehlo-reply"),
        pytest.param(Plan(mail=Say(252, "2.1.0 maybe")), id="252-to-MAIL"),
        pytest.param(Plan(mail=Say(252, "maybe"), extensions=NO_PIPELINING), id="252-to-MAIL-lock"),
        pytest.param(Plan(data=Say(250, "2.0.0 fine")), id="250-to-DATA"),
        pytest.param(Plan(data=Say(250, "fine"), extensions=NO_PIPELINING), id="250-to-DATA-lock"),
        pytest.param(Plan(rcpt=(Say(252, "2.1.5 cannot verify"),)), id="252-to-RCPT"),
        pytest.param(Plan(data=Say(220, "hi")), id="220-to-DATA"),
        pytest.param(Plan(dot=Say(354, "more?")), id="354-after-dot"),
        pytest.param(Plan(dot=Say(150, "hm")), id="1xx-after-dot"),
        pytest.param(Plan(mail=Say(raw=b"hello there\r\n")), id="garbage-to-MAIL"),
        pytest.param(
            Plan(mail=Say(250, "ok", extra=b"250 2.1.5 ok\r\n")), id="extra-reply-after-MAIL"
        ),
        pytest.param(
            Plan(mail=Say(250, "ok", extra=b"250 ok\r\n"), extensions=NO_PIPELINING),
            id="extra-reply-after-MAIL-lock",
        ),
        pytest.param(
            Plan(data=Say(354, "go", extra=b"250 2.0.0 queued\r\n")), id="reply-queued-after-354"
        ),
    ],
)
async def test_a_reply_out_of_step_is_a_deferral_and_nothing_is_delivered(plan: Plan) -> None:
    async with HostileReceiver(plan) as rx:
        outcomes = await deliver(rx, tx("a@dest.test", "b@dest.test"))
    assert set(outcomes) == {"a@dest.test", "b@dest.test"}
    for outcome in outcomes.values():
        assert protocol_error(outcome), outcome
    assert rx.delivered() == set()


async def test_greeting_250_sends_nothing_and_says_why() -> None:
    async with HostileReceiver(Plan(greeting=Say(250, "hostile.test"))) as rx:
        outcome = await rx.session().open()
    assert outcome is not None and protocol_error(outcome)
    assert outcome.reply.text == "protocol error: greeting answered 250 hostile.test"
    assert rx.commands == []  # dropped at once: not even a QUIT to a peer out of step


async def test_a_reply_queued_behind_354_stops_the_message_from_being_sent() -> None:
    """A 250 waiting behind the 354 would be read as the reply after the dot."""
    async with HostileReceiver(Plan(data=Say(354, "go", extra=b"250 2.0.0 queued\r\n"))) as rx:
        outcomes = await deliver(rx, tx())
    assert outcomes["a@dest.test"].reply.text.endswith("unsolicited data before the message")
    assert rx.txns[0].body is None  # not one line of the message was sent


async def test_rcpt_accepted_then_5xx_after_the_dot_bounces() -> None:
    async with HostileReceiver(Plan(dot=Say(554, "5.6.0 content rejected"))) as rx:
        outcomes = await deliver(rx, tx())
    assert outcomes["a@dest.test"].verdict is Verdict.PERMANENT
    assert outcomes["a@dest.test"].reply.enhanced == "5.6.0"
    assert rx.txns[0].body is not None and rx.delivered() == set()


async def test_rcpt_failures_keep_their_own_meaning() -> None:
    plan = Plan(rcpt=(Say(550, "5.1.1 no such user"), Say(450, "4.2.0 busy"), Say(250, "ok")))
    async with HostileReceiver(plan) as rx:
        outcomes = await deliver(rx, tx("a@dest.test", "b@dest.test", "c@dest.test"))
    assert outcomes["a@dest.test"].verdict is Verdict.PERMANENT
    assert outcomes["b@dest.test"].verdict is Verdict.TEMPORARY
    assert outcomes["c@dest.test"].verdict is Verdict.DELIVERED
    assert rx.delivered() == {"c@dest.test"}


async def test_a_well_behaved_receiver_still_delivers_in_one_write() -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx("a@dest.test", "b@dest.test"))
    assert {o.verdict for o in outcomes.values()} == {Verdict.DELIVERED}
    assert rx.txns[0].body == RAW
    assert rx.delivered() == {"a@dest.test", "b@dest.test"}


async def test_extra_reply_after_the_dot_drops_the_session_before_the_next_mail() -> None:
    plan = Plan(dot=Say(250, "2.0.0 queued", extra=b"250 2.0.0 queued too\r\n"))
    async with HostileReceiver(plan) as rx:
        session = rx.session()
        assert await session.open() is None
        first = await session.send(tx())
        assert isinstance(first, dict) and first["a@dest.test"].verdict is Verdict.DELIVERED
        assert not session.usable  # the stray reply would have answered the next MAIL
        await session.close()
    assert len(rx.mails) == 1


# -- finding 6: plaintext after the 220 to STARTTLS -----------------------------------------

# What a man in the middle would inject: the answers to EHLO, MAIL, RCPT, DATA and the dot.
INJECTION = b"250 hostile.test\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n250 2.0.0 queued\r\n"


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
async def test_plaintext_after_starttls_220_defers_and_never_falls_back(policy: str) -> None:
    plan = Plan(tls=server_tls(), starttls=Say(220, "2.0.0 go ahead", extra=INJECTION))
    async with HostileReceiver(plan) as rx:
        outcomes = await deliver(rx, tx(), tls=policy)
    outcome = outcomes["a@dest.test"]
    assert protocol_error(outcome) and "STARTTLS" in outcome.reply.text
    assert rx.connections == 1  # no plaintext retry on the word of an injecting peer
    assert rx.mails == [] and rx.delivered() == set()


async def test_starttls_without_injection_delivers_over_tls() -> None:
    async with HostileReceiver(Plan(tls=server_tls())) as rx:
        outcomes = await deliver(rx, tx(), tls="opportunistic")
    assert outcomes["a@dest.test"].verdict is Verdict.DELIVERED
    assert rx.txns[0].tls and rx.delivered() == {"a@dest.test"}


# -- finding 11: SMTPUTF8 and IDN ----------------------------------------------------------


async def test_utf8_local_part_to_a_peer_without_smtputf8_bounces_5_6_7_unsent() -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx("josé@dest.test"))
    outcome = outcomes["josé@dest.test"]
    assert outcome.verdict is Verdict.PERMANENT
    assert (outcome.reply.code, outcome.reply.enhanced) == (553, "5.6.7")
    assert rx.mails == []  # no transaction at all


async def test_utf8_local_part_bounces_alone_and_the_rest_go_in_ascii() -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx("josé@dest.test", "a@dest.test"))
    assert outcomes["josé@dest.test"].reply.enhanced == "5.6.7"
    assert outcomes["a@dest.test"].verdict is Verdict.DELIVERED
    assert rx.rcpt_lines == [b"RCPT TO:<a@dest.test>"]
    assert all(c.isascii() for c in rx.commands) and b"SMTPUTF8" not in rx.mails[0]


async def test_utf8_sender_to_a_peer_without_smtputf8_bounces_the_whole_message() -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx("a@dest.test", "b@dest.test", sender="rené@origin.test"))
    assert {(o.reply.code, o.reply.enhanced) for o in outcomes.values()} == {(553, "5.6.7")}
    assert rx.mails == []


async def test_idn_domain_to_a_peer_without_smtputf8_goes_as_a_label() -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx("a@bücher.test", sender="s@müller.test"))
    assert outcomes["a@bücher.test"].verdict is Verdict.DELIVERED
    assert rx.mails[0].startswith(b"MAIL FROM:<s@xn--mller-kva.test>")
    assert b"SMTPUTF8" not in rx.mails[0]
    assert rx.rcpt_lines == [b"RCPT TO:<a@xn--bcher-kva.test>"]


@pytest.mark.parametrize(
    ("sender", "rcpt", "raw"),
    [
        pytest.param("s@origin.test", "josé@bücher.test", RAW, id="utf8-recipient-only"),
        pytest.param("rené@origin.test", "a@dest.test", RAW, id="utf8-sender"),
        pytest.param(
            "s@origin.test", "a@dest.test", "Subject: café\r\n\r\nhi\r\n".encode(), id="headers"
        ),
    ],
)
async def test_peer_with_smtputf8_gets_utf8_raw_with_the_parameter(
    sender: str, rcpt: str, raw: bytes
) -> None:
    async with HostileReceiver(Plan(extensions=("PIPELINING", "8BITMIME", "SMTPUTF8"))) as rx:
        outcomes = await deliver(rx, tx(rcpt, sender=sender, raw=raw))
    assert outcomes[rcpt].verdict is Verdict.DELIVERED
    assert rx.mails[0] == f"MAIL FROM:<{sender}> SMTPUTF8".encode()
    assert rx.rcpt_lines == [f"RCPT TO:<{rcpt}>".encode()]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("From: s@origin.test\r\nReply-To: josé@origin.test\r\n\r\nhi\r\n", id="crlf"),
        pytest.param("From: s@origin.test\nSubject: café\n\nhi\n", id="bare-lf"),
        pytest.param("Subject: x\r\nX-Last: é", id="no-body"),
    ],
)
async def test_utf8_headers_to_a_peer_without_smtputf8_bounce_5_6_7_unsent(raw: str) -> None:
    """RFC 6531/6532: a message with UTF-8 headers goes only with SMTPUTF8. Before: an
    ASCII envelope sent such headers raw to any peer (compose writes a UTF-8 reply_to so)."""
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx("a@dest.test", "b@dest.test", raw=raw.encode()))
    for outcome in outcomes.values():
        assert outcome.verdict is Verdict.PERMANENT
        assert (outcome.reply.code, outcome.reply.enhanced) == (553, "5.6.7")
        assert "SMTPUTF8" in outcome.reply.text
    assert rx.mails == []  # no transaction at all


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("From: s@origin.test\r\nSubject: x\r\n\r\nCafé\r\n", id="crlf"),
        pytest.param("From: s@origin.test\nSubject: x\n\nCafé\n", id="bare-lf"),
        pytest.param("From: s@origin.test\r\n\nCafé\r\n\r\nmore é\r\n", id="mixed"),
        pytest.param("\r\nCafé: no header at all\r\n", id="no-header"),
    ],
)
async def test_an_8bit_body_under_ascii_headers_goes_without_smtputf8(raw: str) -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx(raw=raw.encode()))
    assert outcomes["a@dest.test"].verdict is Verdict.DELIVERED
    assert rx.mails == [b"MAIL FROM:<s@origin.test>"]
    assert rx.delivered() == {"a@dest.test"}


async def test_utf8_headers_bounce_through_the_deliverer_with_a_dsn(world: World) -> None:
    raw = "From: sender@origin.test\r\nReply-To: josé@origin.test\r\n\r\nhi\r\n".encode()
    mid = await world.queue("a@example.test", source=Source.SMTP, raw=raw)
    async with HostileReceiver(Plan()) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port))
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.BOUNCED
    assert r.last_reply is not None and (r.last_reply.code, r.last_reply.enhanced) == (553, "5.6.7")
    # Only the DSN (ASCII headers, null sender) reached the receiver.
    assert [t.mail for t in rx.txns] == [b"MAIL FROM:<>"]


async def test_ascii_mail_to_a_smtputf8_peer_has_no_parameter() -> None:
    async with HostileReceiver(Plan(extensions=("SMTPUTF8",))) as rx:
        await deliver(rx, tx())
    assert rx.mails == [b"MAIL FROM:<s@origin.test>"]


@pytest.mark.parametrize(
    "bad",
    [
        "a@dest.test>\r\nRSET",
        "a@dest.test> NOTIFY=NEVER",
        "a b@dest.test",
        "a@dest.test\x00",
        "<a@dest.test",
        '"x" NOTIFY=NEVER "@dest.test',
    ],
)
async def test_an_address_that_could_inject_is_refused_5_1_3_unwritten(bad: str) -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx(bad, "ok@dest.test"))
    assert outcomes[bad].verdict is Verdict.PERMANENT
    assert (outcomes[bad].reply.code, outcomes[bad].reply.enhanced) == (553, "5.1.3")
    assert outcomes["ok@dest.test"].verdict is Verdict.DELIVERED
    assert rx.rcpt_lines == [b"RCPT TO:<ok@dest.test>"]


async def test_a_quoted_local_part_with_a_space_is_sent() -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx('"a b"@dest.test'))
    assert outcomes['"a b"@dest.test'].verdict is Verdict.DELIVERED


async def test_a_sender_that_could_inject_bounces_everything_5_1_7() -> None:
    async with HostileReceiver(Plan()) as rx:
        outcomes = await deliver(rx, tx(sender="s@origin.test> NOTIFY=NEVER"))
    assert outcomes["a@dest.test"].reply.enhanced == "5.1.7"
    assert rx.mails == []


# -- through the Deliverer and the store -----------------------------------------------------


async def test_greeting_250_defers_through_the_deliverer(world: World) -> None:
    mid = await world.queue("a@example.test")
    async with HostileReceiver(Plan(greeting=Say(250, "hostile.test"))) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port))
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED
    assert r.last_reply is not None and (r.last_reply.code, r.last_reply.enhanced) == (451, "4.5.0")


async def test_starttls_injection_defers_through_the_deliverer(world: World) -> None:
    mid = await world.queue("a@example.test")
    plan = Plan(tls=server_tls(), starttls=Say(220, "go ahead", extra=INJECTION))
    async with HostileReceiver(plan) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port, tls="opportunistic"))
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED and rx.mails == []


async def test_utf8_recipient_bounces_with_a_dsn_and_the_rest_is_delivered(world: World) -> None:
    mid = await world.queue("josé@example.test", "a@example.test", source=Source.SMTP)
    async with HostileReceiver(Plan()) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port))
    by_address = {r.address: r for r in await world.store.recipients(mid)}
    bounced = by_address["josé@example.test"]
    assert bounced.status is RecipientStatus.BOUNCED
    assert bounced.last_reply is not None and bounced.last_reply.enhanced == "5.6.7"
    assert by_address["a@example.test"].status is RecipientStatus.DELIVERED
    # The DSN went to the sender (origin.test has the same MX): a second transaction.
    assert [t.rcpts for t in rx.txns if t.mail == b"MAIL FROM:<>"] == [
        [("sender@origin.test", 250)]
    ]
    assert all("josé" not in a for t in rx.txns for a, _ in t.rcpts)


async def test_a_receiver_closing_at_rcpt_defers(world: World) -> None:
    mid = await world.queue("a@example.test")
    async with HostileReceiver(Plan(rcpt=(CLOSE,))) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port))
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.DEFERRED and rx.delivered() == set()
