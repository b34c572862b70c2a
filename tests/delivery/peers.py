"""Real peers on loopback for delivery tests: a DNS server (dnslib) and a scripted SMTP
receiver (aiosmtpd). Both run in their own threads and stop with their fixtures."""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSError
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from a dict: name -> [(qtype, value)], MX values as (preference, host).
    TXT values: a str is one record split into 255-byte character-strings (as publishers
    split long DKIM keys); a list or tuple of strings is one record's character-strings."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.servfail: set[str] = set()
        self.drop: set[str] = set()  # names never answered: the client times out
        self.queries: list[tuple[str, str]] = []

    def add(self, name: str, qtype: str, value: Any) -> None:
        self.records[name.rstrip(".").lower()].append((qtype, value))

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        if qname in self.drop:
            raise DNSError(f"dropping the query for {qname}")  # dnslib sends nothing
        if qname in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if qname not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, value in self.records[qname]:
            if rtype != qtype:
                continue
            if rtype == "MX":
                rdata = MX(value[1], value[0])
            elif rtype == "A":
                rdata = A(value)
            elif rtype == "TXT":
                rdata = TXT(txt_strings(value))
            else:
                rdata = AAAA(value)
            reply.add_answer(RR(qname, QTYPE.reverse[rtype], rdata=rdata, ttl=60))
        return reply


def txt_strings(value: str | bytes | list[str] | tuple[str, ...]) -> list[bytes]:
    """One TXT record's character-strings: a str/bytes cut every 255 bytes, a list as given."""
    if isinstance(value, (list, tuple)):
        return [part.encode() for part in value]
    data = value.encode() if isinstance(value, str) else value
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


def start_dns() -> tuple[DNSServer, ZoneResolver, int]:
    zone = ZoneResolver()
    quiet = DNSLogger(logf=lambda _: None)
    server = DNSServer(zone, port=0, address="127.0.0.1", logger=quiet)
    server.start_thread()
    port = server.server.server_address[1]
    return server, zone, port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool = False


@dataclass
class Script:
    """How the sink answers, by recipient local part prefix."""

    received: list[Received] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    open_now: int = 0
    max_open: int = 0
    connections: int = 0
    rcpt_limit: int = 0  # 452 after this many RCPTs in one transaction (0: no limit)
    busy_data: int = 0  # answer this many DATA commands with 421, then accept again
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScriptedHandler:
    def __init__(self, script: Script) -> None:
        self.script = script

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        s = self.script
        local = address.split("@")[0]
        with s.lock:
            s.seen[address] += 1
            count = s.seen[address]
        if s.rcpt_limit and len(envelope.rcpt_tos) >= s.rcpt_limit:
            return "452 4.5.3 Too many recipients"
        if local.startswith("tempfail-once") and count == 1:
            return "450 4.2.0 Mailbox busy, try later"
        if local.startswith("tempfail") and not local.startswith("tempfail-once"):
            return "451 4.3.0 Temporary local problem"
        if local.startswith("reject"):
            return "550 5.1.1 No such user here"
        if local.startswith("full"):
            return "552 5.2.2 Mailbox full"
        if local.startswith("policy"):
            return "554 5.7.1 Message refused by local policy"
        if local.startswith("toobig"):
            return "552 5.3.4 Message too big for system"
        if local.startswith("unknown"):  # an old receiver: no enhanced code
            return "550 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.split("@")[0].startswith("unlisted"):  # Postfix reject_unlisted_sender
            return (
                "550 5.1.0 <" + address + ">: Sender address rejected:"
                " User unknown in local recipient table"
            )
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.script.lock:
            if self.script.busy_data > 0:
                self.script.busy_data -= 1
                return "421 4.3.2 System busy, try later"
        if any(r.split("@")[0].startswith("datafail") for r in envelope.rcpt_tos):
            return "554 5.6.0 Content rejected"
        if any(r.split("@")[0].startswith("dataunknown") for r in envelope.rcpt_tos):
            return "550 5.1.1 User unknown"  # said at end of data: about whom?
        if any(r.split("@")[0].startswith("datatemp") for r in envelope.rcpt_tos):
            return "451 4.3.0 Local problem at end of data, try later"
        with self.script.lock:
            self.script.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.content,
                    tls=session.ssl is not None,
                )
            )
        return "250 2.0.0 Queued"


class CountingSMTP(SMTP):  # type: ignore[misc]
    script: Script

    def connection_made(self, transport: Any) -> None:
        with self.script.lock:
            self.script.open_now += 1
            self.script.connections += 1
            self.script.max_open = max(self.script.max_open, self.script.open_now)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        with self.script.lock:
            self.script.open_now -= 1
        super().connection_lost(exc)


class SinkController(Controller):  # type: ignore[misc]
    def __init__(self, script: Script, port: int, tls_context: Any = None) -> None:
        self.script = script
        self.sink_tls = tls_context
        super().__init__(ScriptedHandler(script), hostname="127.0.0.1", port=port)

    def factory(self) -> SMTP:
        smtp = CountingSMTP(
            self.handler, hostname="sink.test", decode_data=False, tls_context=self.sink_tls
        )
        smtp.script = self.script
        return smtp


def parse_status(report: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z-]+): (.*)$", report, flags=re.M))


class RawPeer:
    """A misbehaving SMTP server on an address of our choosing, for failure stories:
    mode "greet421" (421 at greeting), "drop_in_data" (closes mid-DATA),
    "stall_after_dot" (takes the message, never answers the final dot)."""

    def __init__(self, mode: str, host: str, port: int) -> None:
        import asyncio

        self.mode, self.host, self.port = mode, host, port
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None

    def start(self) -> None:
        import asyncio

        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, self.host, self.port), self.loop
        )
        self.server = fut.result(10)

    def stop(self) -> None:
        import asyncio

        async def close() -> None:
            self.server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _session(self, reader: Any, writer: Any) -> None:
        import asyncio

        self.connections += 1
        try:
            if self.mode == "greet421":
                writer.write(b"421 4.3.2 Too busy, go away\r\n")
                await writer.drain()
                return
            writer.write(b"220 raw.test ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250 raw.test\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    if self.mode == "drop_in_data":
                        await reader.read(10)
                        return
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    await asyncio.sleep(3600)  # stall_after_dot: never answer
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()
