"""The client pipelines (RFC 2920) when the server offers it: MAIL, every RCPT and DATA
leave in one write, and the data goes out with CRLF line ends and dot-stuffing only."""

from __future__ import annotations

import asyncio

from mailgate.models import RecipientStatus, Source
from tests.delivery.conftest import World


class WirePeer:
    """An SMTP server that offers PIPELINING and records every chunk it reads."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.data = b""

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 wire.test ESMTP\r\n")
        await writer.drain()
        await reader.readline()  # EHLO
        writer.write(b"250-wire.test\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
        await writer.drain()
        envelope = await reader.read(65536)
        self.chunks.append(envelope)
        if envelope.upper().startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            writer.close()
            return
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        await writer.drain()
        while not self.data.endswith(b"\r\n.\r\n"):
            more = await reader.read(65536)
            if not more:
                return
            self.data += more
        writer.write(b"250 2.0.0 queued\r\n")
        await writer.drain()
        line = await reader.readline()
        if line.upper().startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            await writer.drain()
        writer.close()


async def test_envelope_and_data_go_in_one_write_and_the_body_is_stuffed(world: World) -> None:
    peer = WirePeer()
    server = await asyncio.start_server(peer.session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    raw = b"Subject: wire\r\n\r\n.leading dot\nbare LF\rbare CR\r\n..two dots\r\nno final newline"
    mid = await world.queue("a@example.test", "b@example.test", raw=raw, source=Source.HTTP)
    try:
        await world.run_until_idle(world.deliverer(port=port))
    finally:
        server.close()
        await server.wait_closed()
    assert len(peer.chunks) == 1
    verbs = [line.split(b":")[0] for line in peer.chunks[0].split(b"\r\n")]
    assert verbs == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA", b""]
    assert peer.data == (
        b"Subject: wire\r\n\r\n..leading dot\r\nbare LF\r\nbare CR\r\n...two dots\r\n"
        b"no final newline\r\n.\r\n"
    )
    by_address = {r.address: r for r in await world.store.recipients(mid)}
    assert by_address["a@example.test"].status is RecipientStatus.DELIVERED
    assert by_address["b@example.test"].status is RecipientStatus.BOUNCED


async def test_a_message_over_the_servers_size_limit_bounces_without_being_sent(
    world: World,
) -> None:
    peer = WirePeer()  # offers SIZE 1000000
    server = await asyncio.start_server(peer.session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    raw = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
    mid = await world.queue("a@example.test", raw=raw * 1100, source=Source.HTTP)
    try:
        await world.run_until_idle(world.deliverer(port=port))
    finally:
        server.close()
        await server.wait_closed()
    [r] = await world.store.recipients(mid)
    assert r.status is RecipientStatus.BOUNCED and r.last_reply is not None
    assert (r.last_reply.code, r.last_reply.enhanced) == (552, "5.3.4")
    assert peer.chunks == [b"QUIT\r\n"], "nothing of the message was sent"
