"""Generated receiver reply sequences (issue 11): whatever a receiver answers at each step
(the right code, a wrong one in any class, multiline, garbage, a close, or unsolicited
lines after the reply; with or without PIPELINING, SMTPUTF8 and STARTTLS), the client
keeps three promises:

- a recipient is DELIVERED only if the receiver accepted it, took the whole body and
  answered 2xx after the final dot;
- every recipient gets exactly one outcome from each transaction;
- nothing raises out of Session.open / Session.send.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace

import trustme
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mailgate.addresses import ascii_domain
from mailgate.delivery.outcome import Outcome, Verdict
from mailgate.delivery.smtp_client import Transaction
from tests.delivery.hostile_receiver import CLOSE, HostileReceiver, Plan, Say

RAW = b"From: s@origin.test\r\nSubject: gen\r\n\r\nbody\r\n.dot\r\n..two\r\n"
CODES = [150, 200, 220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 451, 452, 500, 550, 554]
EXTRAS = [
    b"250 2.0.0 ok\r\n",
    b"354 go ahead\r\n",
    b"550 5.0.0 no\r\n",
    b"220 hello again\r\n",
    b"250-two\r\n250 lines\r\n",
]
GARBAGE = [b"hello\r\n", b"25O ok\r\n", b"\r\n", b"2500 ok\r\n", b"\xff\xfe\r\n"]
_CA = trustme.CA()


def _server_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _CA.issue_cert("mx.hostile.test").configure_cert(ctx)
    return ctx


SERVER_TLS = _server_tls()


@st.composite
def answers(draw: st.DrawFn, right: Say) -> Say:
    """Mostly the right answer (so deep paths are reached), else something wrong."""
    roll = draw(st.integers(0, 99))
    if roll < 75:
        return replace(right, more=("more",) * draw(st.integers(0, 2)))
    if roll < 85:
        return Say(draw(st.sampled_from(CODES)), "wrong", ("more",) * draw(st.integers(0, 1)))
    if roll < 89:
        return Say(raw=draw(st.sampled_from(GARBAGE)))
    if roll < 93:
        return CLOSE
    return replace(right, extra=draw(st.sampled_from(EXTRAS)))


@st.composite
def plans(draw: st.DrawFn, rcpts: int) -> Plan:
    base = Plan()
    ehlo_roll = draw(st.integers(0, 99))
    extensions = ["8BITMIME"]
    if draw(st.booleans()):
        extensions.append("PIPELINING")
    if draw(st.booleans()):
        extensions.append("SMTPUTF8")
    return Plan(
        greeting=draw(answers(base.greeting)),
        ehlo=None if ehlo_roll < 85 else draw(answers(Say(250, "hostile.test"))),
        ehlo_extra=draw(st.sampled_from(EXTRAS)) if 85 > ehlo_roll >= 78 else b"",
        extensions=tuple(extensions),
        helo=draw(answers(base.helo)),
        starttls=draw(answers(base.starttls)),
        mail=draw(answers(base.mail)),
        rcpt=tuple(draw(answers(base.rcpt[0])) for _ in range(rcpts)),
        data=draw(answers(base.data)),
        dot=draw(answers(base.dot)),
        tls=SERVER_TLS if draw(st.integers(0, 9)) == 0 else None,
    )


def on_wire(address: str) -> str:
    """The form an address may take on the wire: A-labels when the peer lacks SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{ascii_domain(domain)}"


def check(rx: HostileReceiver, t: Transaction, result: dict[str, Outcome] | Outcome) -> None:
    if isinstance(result, Outcome):  # the connection failed: one outcome for everyone
        event("connection-level outcome")
        assert result.verdict is not Verdict.DELIVERED
        return
    assert set(result) == set(t.recipients)  # one outcome each, none invented
    delivered = {on_wire(r) for r, o in result.items() if o.verdict is Verdict.DELIVERED}
    event(f"{len(delivered)} of {len(result)} delivered")
    assert delivered <= {on_wire(a) for a in rx.delivered()}, (delivered, rx.txns)
    for rcpt in delivered:
        assert any(
            txn.body == RAW and any(on_wire(a) == rcpt for a, _ in txn.rcpts) for txn in rx.txns
        ), rcpt


async def conversation(plan: Plan, first: Transaction, second: Transaction, tls: str) -> None:
    async with HostileReceiver(plan) as rx:
        session = rx.session(tls=tls, connect_timeout=5, command_timeout=3, data_timeout=3)
        problem = await session.open()
        if problem is not None:
            event("open failed")
            assert problem.verdict is not Verdict.DELIVERED
            await session.close()
            assert rx.delivered() == set()
            return
        check(rx, first, await session.send(first))
        if session.usable:  # the same connection goes on only while the peer is in step
            check(rx, second, await session.send(second))
        await session.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    count=st.integers(1, 3),
    utf8=st.booleans(),
    tls=st.sampled_from(["none", "opportunistic"]),
)
def test_nothing_is_delivered_without_a_2xx_after_the_final_dot(
    data: st.DataObject, count: int, utf8: bool, tls: str
) -> None:
    plan = data.draw(plans(count))
    names = ["josé", "b", "c"] if utf8 else ["a", "b", "c"]
    first = Transaction("s@origin.test", tuple(f"{n}@dest.test" for n in names[:count]), RAW)
    second = Transaction("s@origin.test", ("d@dest.test", "e@bücher.test")[:count], RAW)
    asyncio.run(conversation(plan, first, second, tls))
