"""Messages pipelined across transactions (RFC 2920 3.1): a message's data and final dot
leave in one write with the next message's MAIL, RCPT and DATA. The promise stays that of
one message at a time: only a 2xx after a message's own final dot delivers it, a reply
out of step never delivers the next one, and a next message whose envelope went ahead but
whose data never left is deferred, never counted sent. Real sockets on loopback: a
recording peer for the write boundaries, the scripted HostileReceiver for the rest."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from mailgate.delivery.outcome import Outcome, Verdict
from mailgate.delivery.smtp_client import Connection, Transaction
from mailgate.errors import ConnectionLost
from mailgate.models import RecipientStatus, Source
from tests.delivery.conftest import World
from tests.delivery.hostile_receiver import CLOSE, HostileReceiver, Plan, Say


def tx(*rcpts: str, body: bytes = b"hello") -> Transaction:
    return Transaction("s@origin.test", rcpts, b"Subject: t\r\n\r\n" + body + b"\r\n")


class ChunkPeer:
    """An SMTP server offering PIPELINING that answers every command and final dot in the
    order received and records each chunk read from the socket, so a test sees which
    commands and data the client put in one write."""

    def __init__(self, busy_at: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.bodies: list[bytes] = []
        self.busy_at = busy_at  # the n-th MAIL of each connection gets 421, then a close

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 chunk.test ESMTP\r\n")
        mails = 0
        pending = b""
        body: list[bytes] | None = None  # collecting a message's lines after 354
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                self.chunks.append(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\r\n")
                out: list[bytes] = []
                for line in lines:
                    if body is not None:
                        if line == b".":
                            self.bodies.append(b"\r\n".join(body) + b"\r\n")
                            body = None
                            out.append(b"250 2.0.0 queued")
                        else:
                            body.append(line[1:] if line.startswith(b".") else line)
                        continue
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        out.append(b"250-chunk.test\r\n250 PIPELINING")
                    elif verb == b"DATA":
                        body = []
                        out.append(b"354 go ahead")
                    elif verb == b"QUIT":
                        writer.write(b"".join(o + b"\r\n" for o in out) + b"221 bye\r\n")
                        return
                    elif verb == b"MAIL" and (mails := mails + 1) == self.busy_at:
                        out.append(b"421 4.7.0 Try again later, closing connection")
                        writer.write(b"".join(o + b"\r\n" for o in out))
                        return
                    else:
                        out.append(b"250 ok")
                if out:
                    writer.write(b"".join(o + b"\r\n" for o in out))
                    await writer.drain()
        finally:
            writer.close()


def verbs(chunk: bytes) -> list[bytes]:
    """The commands in a chunk, with a message's content as b"<data>"."""
    found: list[bytes] = []
    for line in chunk.split(b"\r\n")[:-1]:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"):
            found.append(verb)
        elif line == b".":
            found.append(b".")
        elif not found or found[-1] != b"<data>":
            found.append(b"<data>")
    return found


async def send_three(
    world: World, peer: ChunkPeer | None = None, **cfg: object
) -> tuple[ChunkPeer, list[str]]:
    peer = peer or ChunkPeer()
    server = await asyncio.start_server(peer.session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ids = [
        await world.queue(f"r{i}@example.test", raw=b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i))
        for i in range(3)
    ]
    try:
        await world.run_until_idle(world.deliverer(port=port, **cfg))
    finally:
        server.close()
        await server.wait_closed()
    return peer, ids


async def test_each_message_data_leaves_with_the_next_envelope(world: World) -> None:
    peer, ids = await send_three(world)
    assert [verbs(c) for c in peer.chunks] == [
        [b"EHLO"],
        [b"MAIL", b"RCPT", b"DATA"],
        [b"<data>", b".", b"MAIL", b"RCPT", b"DATA"],
        [b"<data>", b".", b"MAIL", b"RCPT", b"DATA"],
        [b"<data>", b"."],
        [b"QUIT"],
    ]
    assert sorted(peer.bodies) == [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
    for mid in ids:
        [r] = await world.store.recipients(mid)
        assert r.status is RecipientStatus.DELIVERED


async def test_a_paced_domain_sends_each_message_on_its_own(world: World) -> None:
    peer, _ = await send_three(world, domain_rate=1000)
    assert [verbs(c) for c in peer.chunks][1:-1] == [
        [b"MAIL", b"RCPT", b"DATA"],
        [b"<data>", b"."],
    ] * 3
    assert len(peer.bodies) == 3


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"250 2.0.0 queued too\r\n", id="extra-250"),
        pytest.param(b"354 go on\r\n", id="extra-354"),
        pytest.param(b"250 2.0.0 a\r\n250 2.0.0 b\r\n250 2.0.0 c\r\n", id="three-extra-250"),
        # read as the next MAIL's reply, it would bounce a message the server never refused
        pytest.param(b"550 5.7.1 stray refusal\r\n", id="extra-550"),
    ],
)
async def test_a_stray_reply_after_a_dot_defers_and_never_delivers_the_next(extra: bytes) -> None:
    """The stray reply shifts the next group's replies; seen out of step, neither message
    counts: the first is deferred (it may have been taken: a possible duplicate, never a
    false delivery) and the second's data never leaves."""
    plan = Plan(dot=Say(250, "2.0.0 queued", extra=extra))
    async with HostileReceiver(plan) as rx:
        session = rx.session()
        assert await session.open() is None
        first = await session.send(tx("a@dest.test"), then=tx("b@dest.test"))
        assert isinstance(first, dict)
        assert first["a@dest.test"].verdict is Verdict.TEMPORARY, first
        assert first["a@dest.test"].reply.enhanced == "4.5.0"
        assert not session.usable
        await session.close()
    assert all(t.body is None for t in rx.txns[1:])
    assert "b@dest.test" not in rx.delivered()


async def test_a_missing_reply_to_the_dot_is_never_read_as_one() -> None:
    """The peer takes the data and dot without a word, then answers the next group: its
    MAIL's 250 must not count as the reply after the dot."""
    async with HostileReceiver(Plan(dot=Say(raw=b""))) as rx:
        session = rx.session()
        assert await session.open() is None
        first = await session.send(tx("a@dest.test"), then=tx("b@dest.test"))
        assert isinstance(first, dict)
        assert first["a@dest.test"].verdict is Verdict.TEMPORARY, first
        assert not session.usable
    assert rx.delivered() == set()


async def test_a_stray_reply_never_moves_a_refusal_to_another_recipient(world: World) -> None:
    """Each transaction's first recipient is refused, its second accepted; a stray 250
    follows every dot. Read one off, the second message's refusal of x would be y's, and
    y would be bounced and suppressed on another address's reply."""
    first = await world.queue("w@example.test", "v@example.test", source=Source.HTTP)
    world.clock.advance(1)
    second = await world.queue("x@example.test", "y@example.test", source=Source.HTTP)
    plan = Plan(
        rcpt=(Say(550, "5.1.1 no such user"), Say(250, "2.1.5 ok")),
        dot=Say(250, "2.0.0 queued", extra=b"250 2.0.0 stray\r\n"),
    )
    async with HostileReceiver(plan) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port))
    status = {
        r.address: r.status for mid in (first, second) for r in await world.store.recipients(mid)
    }
    assert status["w@example.test"] is RecipientStatus.BOUNCED
    assert status["x@example.test"] is RecipientStatus.BOUNCED
    # v: deferred (its reply came with a stray one); y: delivered on a fresh connection
    assert status["v@example.test"] is RecipientStatus.DEFERRED
    assert status["y@example.test"] is RecipientStatus.DELIVERED
    listed = await world.store.suppressed_among(["v@example.test", "y@example.test"])
    assert listed == {}


async def test_no_reply_to_data_drops_without_quit() -> None:
    """DATA unanswered in time: the peer may be reading content, so no QUIT follows."""
    async with HostileReceiver(Plan(data=Say(raw=b""))) as rx:
        session = rx.session(command_timeout=0.3)
        assert await session.open() is None
        result = await session.send(tx("a@dest.test"))
        assert isinstance(result, Outcome) and result.verdict is Verdict.TEMPORARY
        assert not session.usable
        await session.close()
        await rx.served()
    assert b"QUIT" not in rx.commands


async def test_a_connection_lost_after_the_data_sends_the_next_message_to_the_next_mx(
    world: World,
) -> None:
    """The first connection takes the first message's data and closes without a reply:
    that message is sent again (a possible duplicate, never a loss) and the second, whose
    envelope went ahead but whose data never left, goes whole to the next MX."""
    world.zone.add("example.test", "MX", (20, "mx2.example.test"))
    world.zone.add("mx2.example.test", "A", "127.0.0.1")
    first = await world.queue("a@example.test")
    second = await world.queue("b@example.test")
    async with HostileReceiver(Plan(dot=CLOSE), Plan()) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port))
    for mid in (first, second):
        [r] = await world.store.recipients(mid)
        assert r.status is RecipientStatus.DELIVERED, r
    assert rx.connections == 2
    # connection 1: the first message whole, then the close; connection 2: both again
    # (the first once more, since its fate was unknown), each with its body
    first_conn, *rest = rx.txns
    assert first_conn.body is not None and first_conn.final is None
    assert sorted(a for t in rest for a, _ in t.rcpts) == ["a@example.test", "b@example.test"]
    assert all(t.body is not None for t in rest)


async def test_closing_with_a_message_sent_ahead_drops_without_quit() -> None:
    """After the envelope went ahead the peer may be reading message content: a QUIT
    would be taken as part of it, so the session is dropped and the message never ends."""
    async with HostileReceiver(Plan()) as rx:
        session = rx.session()
        assert await session.open() is None
        first = await session.send(tx("a@dest.test"), then=tx("b@dest.test"))
        assert isinstance(first, dict) and first["a@dest.test"].verdict is Verdict.DELIVERED
        await session.close()
        await rx.served()
    assert b"QUIT" not in rx.commands
    assert rx.delivered() == {"a@dest.test"} and rx.txns[1].body is None
    assert rx.cut == [b""]  # the DATA sent ahead got nothing, not a QUIT as content


async def test_sending_other_than_the_announced_transaction_is_refused() -> None:
    async with HostileReceiver(Plan()) as rx:
        session = rx.session()
        assert await session.open() is None
        await session.send(tx("a@dest.test"), then=tx("b@dest.test"))
        with pytest.raises(RuntimeError):
            await session.send(tx("c@dest.test"))
        assert not session.usable
    assert rx.delivered() == {"a@dest.test"}


async def test_a_next_message_that_cannot_go_is_not_sent_ahead() -> None:
    """Over the peer's SIZE: it is bounced by the client, so no envelope of it leaves."""
    plan = Plan(extensions=("PIPELINING", "SIZE 100"))
    async with HostileReceiver(plan) as rx:
        session = rx.session()
        assert await session.open() is None
        big = tx("b@dest.test", body=b"x" * 200)
        first = await session.send(tx("a@dest.test"), then=big)
        assert isinstance(first, dict) and first["a@dest.test"].verdict is Verdict.DELIVERED
        second = await session.send(big)
        assert isinstance(second, dict) and second["b@dest.test"].reply.code == 552
        assert session.usable
        await session.close()
    assert len(rx.mails) == 1 and b"QUIT" in rx.commands


async def test_452_leftovers_go_right_after_the_message_sent_ahead(world: World) -> None:
    """The second recipient of each transaction is told 452 (too many): it goes in the
    next transaction but the one whose envelope already left (not at the claim's end, so
    the message's outcomes are recorded soon)."""
    ids = []
    for rcpts in (("a@example.test", "b@example.test"), ("c@example.test",), ("d@example.test",)):
        ids.append(await world.queue(*rcpts, source=Source.HTTP))
        world.clock.advance(1)  # claimed in this order
    plan = Plan(rcpt=(Say(250, "2.1.5 ok"), Say(452, "4.5.3 too many recipients")))
    async with HostileReceiver(plan) as rx:
        await world.run_until_idle(world.deliverer(port=rx.port))
    for mid in ids:
        for r in await world.store.recipients(mid):
            assert r.status is RecipientStatus.DELIVERED, r
    assert [[a for a, _ in t.rcpts] for t in rx.txns] == [
        ["a@example.test", "b@example.test"],
        ["c@example.test"],
        ["b@example.test"],
        ["d@example.test"],
    ]
    assert rx.connections == 1


async def test_a_reply_handled_with_its_expired_deadline_is_late() -> None:
    """The loop busy past a reply's deadline, the reply and the deadline's timer come due
    in the same turn: the reply is late (as with asyncio.timeout), never taken while the
    timer has already made every later read fail, which would have sent a message on a
    late 354 and then lost its final reply (a duplicate)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def peer() -> None:
        client, _ = listener.accept()
        with client:
            client.sendall(b"220 slow.test ESMTP\r\n")
            client.recv(1024)  # EHLO
            time.sleep(0.3)
            client.sendall(b"250 slow.test\r\n")
            client.recv(1024)  # until the client hangs up

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        conn, greeting = await Connection.open("127.0.0.1", listener.getsockname()[1], 5)
        assert greeting.code == 220
        # the loop blocked from 0.05 to 0.65 s: the 0.2 s deadline and the 0.3 s reply
        asyncio.get_running_loop().call_later(0.05, time.sleep, 0.6)
        with pytest.raises(ConnectionLost):
            await conn.command(b"EHLO mg.test", 0.2)
        conn.close()
    finally:
        listener.close()
        await asyncio.to_thread(thread.join, 5)


async def test_421_to_the_next_mail_leaves_the_delivery_standing(world: World) -> None:
    """A server limiting messages per connection answers the next MAIL 421 and closes
    after taking a message: that message is delivered (not sent twice), the rest go on
    fresh connections."""
    peer, ids = await send_three(world, ChunkPeer(busy_at=2))
    assert len(peer.bodies) == 3  # each message once
    for mid in ids:
        [r] = await world.store.recipients(mid)
        assert r.status is RecipientStatus.DELIVERED, r


@pytest.mark.parametrize("closing", [Say(421, "4.3.2 shutting down"), Say(554, "5.5.1 no")])
async def test_a_failed_rset_keeps_the_refusals(closing: Say) -> None:
    plan = Plan(rcpt=(Say(550, "5.1.1 no such user"),), data=Say(554, "5.5.1 none"), rset=closing)
    async with HostileReceiver(plan) as rx:
        session = rx.session()
        assert await session.open() is None
        result = await session.send(tx("x@dest.test", "y@dest.test"))
        assert not session.usable
    assert isinstance(result, dict)
    assert {o.verdict for o in result.values()} == {Verdict.PERMANENT}


async def test_rset_answered_354_defers_the_refusals_read_before() -> None:
    """A 354 to RSET is the DATA's, late: the refusals were read one off."""
    plan = Plan(rcpt=(Say(550, "5.1.1 no such user"),), data=Say(554, "5.5.1 none"), rset=Say(354))
    async with HostileReceiver(plan) as rx:
        session = rx.session()
        assert await session.open() is None
        result = await session.send(tx("x@dest.test", "y@dest.test"))
    assert isinstance(result, dict)
    assert {(o.verdict, o.reply.enhanced) for o in result.values()} == {
        (Verdict.TEMPORARY, "4.5.0")
    }


async def test_354_to_data_after_a_refused_mail_is_out_of_step() -> None:
    plan = Plan(mail=Say(550, "5.7.1 blocked"), rcpt=(Say(550, "5.5.1 no"),), data=Say(354))
    async with HostileReceiver(plan) as rx:
        session = rx.session()
        assert await session.open() is None
        result = await session.send(tx("x@dest.test"))
    outcome = result if isinstance(result, Outcome) else result["x@dest.test"]
    assert (outcome.verdict, outcome.reply.enhanced) == (Verdict.TEMPORARY, "4.5.0")


async def test_cancelled_with_a_message_ahead_drops_at_once() -> None:
    """Cancelled while waiting for the reply to a dot, with the next envelope sent ahead
    (its DATA may be open): the connection is dropped, so no QUIT can follow as content."""
    async with HostileReceiver(Plan(dot=Say(250, "2.0.0 queued", delay=2))) as rx:
        session = rx.session()
        assert await session.open() is None
        sending = asyncio.create_task(session.send(tx("a@dest.test"), then=tx("b@dest.test")))
        for _ in range(200):
            if rx.txns and rx.txns[0].body is not None:
                break  # the data is in; the reply to the dot comes in 2 s
            await asyncio.sleep(0.01)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert not session.usable
        await session.close()
        await rx.served()
    assert b"QUIT" not in rx.commands
    assert not any(b"QUIT" in content for content in rx.cut)  # nor as message content
