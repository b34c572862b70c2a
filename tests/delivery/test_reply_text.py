"""What a receiver's reply text can do to us (issue 11 review, findings 1, 4 and 5): its
control characters and length never reach the store as they came, its lines must agree on
one code, and any reply fits in the DSN that quotes it. Scripted receivers on loopback;
the store stories run on SQLite and PostgreSQL (skipped when PostgreSQL is unreachable)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from mailgate.delivery.bounces import Failure, build_dsn
from mailgate.delivery.outcome import REPLY_TEXT_LIMIT, Outcome, Verdict, from_reply
from mailgate.delivery.smtp_client import Transaction
from mailgate.models import RecipientStatus, Reply, Source
from mailgate.store import open_store
from tests.conftest import pg_schema
from tests.delivery.conftest import Clock, World
from tests.delivery.hostile_receiver import HostileReceiver, Plan, Say
from tests.delivery.peers import start_dns

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
TX = Transaction("s@origin.test", ("a@dest.test",), b"Subject: x\r\n\r\nhi\r\n")


async def send(rx: HostileReceiver, t: Transaction = TX) -> tuple[dict[str, Outcome], bool]:
    """open + send; the outcomes (one for all when the connection failed) and whether the
    session is still usable afterwards."""
    session = rx.session()
    problem = await session.open()
    assert problem is None, problem
    result = await session.send(t)
    usable = session.usable
    await session.close()
    return result if isinstance(result, dict) else dict.fromkeys(t.recipients, result), usable


@asynccontextmanager
async def store_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "postgresql":
        async with pg_schema() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'mailgate.db'}"


# -- finding 1: control characters and length ----------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (Plan(dot=Say(raw=b"250 2.0.0 queued \x00 ok\r\n")), RecipientStatus.DELIVERED),
        (Plan(rcpt=(Say(raw=b"550 5.1.1 no\x00such user\r\n"),)), RecipientStatus.BOUNCED),
        (
            Plan(dot=Say(raw=b"250 2.0.0 \x1b[31m\x7f\xc2\x9b\x01 ok\r\n")),
            RecipientStatus.DELIVERED,
        ),
    ],
    ids=["250-after-dot-with-NUL", "550-to-RCPT-with-NUL", "250-with-escapes-DEL-C1"],
)
async def test_control_characters_in_a_reply_are_settled_as_the_reply_says(
    plan: Plan, expected: RecipientStatus, backend: str, tmp_path: Path
) -> None:
    """Before: the NUL went to store.settle, PostgreSQL refused it, and a message the
    receiver took was deferred 451 4.3.0 and sent again at every retry (a 550 retried)."""
    server, zone, dns_port = start_dns()
    try:
        async with store_url(backend, tmp_path) as url, HostileReceiver(plan) as rx:
            store = open_store(url)
            await store.open()
            try:
                zone.add("dest.test", "MX", (10, "mx.dest.test"))
                zone.add("mx.dest.test", "A", "127.0.0.1")
                world = World(store, zone, dns_port, rx.port, None, Clock())  # type: ignore[arg-type]
                mid = await world.queue("a@dest.test", source=Source.HTTP)
                await asyncio.wait_for(world.run_until_idle(world.deliverer()), 60)
                [r] = await store.recipients(mid)
            finally:
                await store.close()
    finally:
        server.stop()
        server.server.server_close()
    assert r.status is expected, r
    assert r.last_reply is not None and r.last_reply.code in (250, 550)
    assert "?" in r.last_reply.text and not CONTROL.search(r.last_reply.text), r.last_reply


async def test_a_huge_reply_is_kept_short_and_clean() -> None:
    """100 lines of 10,000 characters each (under the line and line-count bounds): the
    outcome holds at most REPLY_TEXT_LIMIT characters, for every recipient it settles."""
    lines = [("5.7.1 " if i == 0 else "") + "x\x00y\t" * 2500 for i in range(100)]
    plan = Plan(rcpt=(Say(550, lines[0], tuple(lines[1:])),))
    async with HostileReceiver(plan) as rx:
        out, _ = await send(
            rx, Transaction("s@origin.test", ("a@dest.test", "b@dest.test"), TX.raw)
        )
    for outcome in out.values():
        assert outcome.verdict is Verdict.PERMANENT
        assert (outcome.reply.code, outcome.reply.enhanced) == (550, "5.7.1")
        assert len(outcome.reply.text) <= REPLY_TEXT_LIMIT
        assert outcome.reply.text.startswith("x?y x?y") and not CONTROL.search(outcome.reply.text)


def test_from_reply_cleans_text_however_it_came() -> None:
    outcome = from_reply(451, "4.3.0 a\x00b\x7fc\x9bd\r\ne\u2028f", "h")
    assert outcome.reply == Reply(451, "4.3.0", "a?b?c?d e f")
    assert len(from_reply(250, "é" * 5000, "h").reply.text) == REPLY_TEXT_LIMIT
    assert len(from_reply(220, "\x00" * 5000, "h").reply.text) <= REPLY_TEXT_LIMIT  # protocol


# -- finding 5: every line of a reply carries the same code ---------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(
            Plan(dot=Say(raw=b"550-5.7.1 rejected as spam\r\n250 2.0.0 ok\r\n")),
            id="550-then-250-dot",
        ),
        pytest.param(Plan(dot=Say(raw=b"250-2.0.0 ok\r\n550 5.7.1 no\r\n")), id="250-then-550-dot"),
        pytest.param(Plan(rcpt=(Say(raw=b"550-5.1.1 no\r\n250 2.1.5 ok\r\n"),)), id="rcpt"),
        pytest.param(Plan(mail=Say(raw=b"451-4.3.0 wait\r\n250 2.1.0 ok\r\n")), id="mail"),
        pytest.param(Plan(data=Say(raw=b"554-no\r\n354 go ahead\r\n")), id="data"),
    ],
)
async def test_a_reply_whose_lines_disagree_on_the_code_is_a_protocol_error(plan: Plan) -> None:
    """RFC 5321 4.2.1. Before: the last line's code counted, so '550-... 250 ok' after the
    dot was recorded delivered."""
    async with HostileReceiver(plan) as rx:
        out, usable = await send(rx)
    outcome = out["a@dest.test"]
    assert outcome.verdict is Verdict.TEMPORARY, outcome
    assert (outcome.reply.code, outcome.reply.enhanced) == (451, "4.5.0"), outcome
    assert "disagree" in outcome.reply.text
    assert not usable  # dropped: replies and commands no longer pair up


async def test_a_greeting_whose_lines_disagree_is_not_a_session() -> None:
    plan = Plan(greeting=Say(raw=b"554-go away\r\n220 welcome\r\n"))
    async with HostileReceiver(plan) as rx:
        problem = await rx.session().open()
    assert problem is not None and (problem.reply.code, problem.reply.enhanced) == (451, "4.5.0")
    assert rx.mails == []


async def test_a_multiline_reply_with_one_code_still_counts() -> None:
    plan = Plan(dot=Say(250, "2.0.0 queued", ("as 1234", "thanks")))
    async with HostileReceiver(plan) as rx:
        out, usable = await send(rx)
    assert out["a@dest.test"].verdict is Verdict.DELIVERED and usable
    assert out["a@dest.test"].reply.text == "queued as 1234 thanks"


# -- finding 4: a DSN line is at most 998 octets, whatever the reply -----------------------


def dsn_lines(failures: list[Failure]) -> list[bytes]:
    dsn = build_dsn(
        b"From: s@origin.test\r\n\r\nhi\r\n", "s@origin.test", failures, "mg.test", 0, 0
    )
    dsn.decode("utf-8")  # cut at a character boundary: still valid UTF-8
    return dsn.split(b"\r\n")


@pytest.mark.parametrize(
    "char", ["€", "😀", "x", "é ", "a"], ids=["3-octet", "4-octet", "ascii", "2-octet-spaced", "a"]
)
@pytest.mark.parametrize("expired", [False, True])
def test_a_dsn_keeps_its_lines_within_998_octets_whatever_the_reply(
    char: str, expired: bool
) -> None:
    """Before: the reply was cut at 900 characters, so 2000 '€' made a 2733-octet line,
    which the sender's server refuses; and a DSN is never bounced, so nobody is told."""
    outcome = from_reply(550, "5.1.1 " + char * 2000, "mx.dest.test")
    stored = Reply(550, "5.1.1", char * 5000)  # stored before replies were cut
    failures = [
        Failure("a@dest.test", "5.1.1", outcome.reply, "mx.dest.test", expired),
        Failure("b@dest.test", "5.1.1", stored, "mx.dest.test", expired),
    ]
    lines = dsn_lines(failures)
    assert max(map(len, lines)) <= 998
    diagnostics = [line.decode() for line in lines if line.startswith(b"Diagnostic-Code:")]
    assert len(diagnostics) == 2
    assert all(
        d.startswith(f"Diagnostic-Code: smtp; 550 5.1.1 {char.strip()}") for d in diagnostics
    )


def test_a_short_reply_is_quoted_whole_in_the_dsn() -> None:
    reply = Reply(550, "5.1.1", "Адресат не существует")
    lines = dsn_lines([Failure("a@dest.test", "5.1.1", reply, "mx.dest.test")])
    assert "Diagnostic-Code: smtp; 550 5.1.1 Адресат не существует".encode() in lines
    assert "<a@dest.test>: 550 5.1.1 Адресат не существует".encode() in lines
