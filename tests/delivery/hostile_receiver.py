"""A scripted SMTP receiver on a real loopback socket that answers each step from a Plan:
the right reply, a wrong one, a multiline one, garbage, a close, or a reply followed by
unsolicited bytes in the same write (a double greeting, plaintext after the 220 to
STARTTLS). It runs in the test's own event loop and records what it actually got, so a
test can hold the client to the truth: a recipient counts as delivered only if this
receiver took the whole body and answered 2xx after the final dot.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from types import TracebackType

from mailgate.config import DeliveryConfig
from mailgate.delivery.mx import Target
from mailgate.delivery.smtp_client import Session


@dataclass(frozen=True)
class Say:
    """One answer. code None: close the connection without a word."""

    code: int | None = 250
    text: str = "ok"
    more: tuple[str, ...] = ()  # further lines: a multiline reply
    extra: bytes = b""  # unsolicited bytes in the same write, after the reply
    raw: bytes | None = None  # sent instead of a reply (garbage)
    delay: float = 0.0  # seconds before it is sent (nothing else is read meanwhile)

    def wire(self) -> bytes | None:
        if self.raw is not None:
            return self.raw + self.extra
        if self.code is None:
            return None
        lines = [self.text, *self.more]
        out = b"".join(f"{self.code}-{line}\r\n".encode() for line in lines[:-1])
        return out + f"{self.code} {lines[-1]}\r\n".encode() + self.extra


CLOSE = Say(None)


@dataclass(frozen=True)
class Plan:
    """How the receiver answers each step; `ehlo` None: 250 with `extensions`."""

    greeting: Say = Say(220, "hostile.test ESMTP")
    ehlo: Say | None = None
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME")
    ehlo_extra: bytes = b""  # unsolicited bytes after the default EHLO reply
    helo: Say = Say(250, "hostile.test")
    starttls: Say = Say(220, "2.0.0 go ahead")
    mail: Say = Say(250, "2.1.0 ok")
    rcpt: tuple[Say, ...] = (Say(250, "2.1.5 ok"),)  # the i-th RCPT; the last repeats
    data: Say = Say(354, "go ahead")
    dot: Say = Say(250, "2.0.0 queued")
    rset: Say = Say(250, "2.0.0 reset")
    tls: ssl.SSLContext | None = None  # offer STARTTLS with this server context


@dataclass
class Txn:
    """One transaction as the receiver saw it."""

    mail: bytes
    rcpts: list[tuple[str, int | None]] = field(default_factory=list)  # address, code sent
    body: bytes | None = None  # everything up to the final dot, once it arrived whole
    final: int | None = None  # the code answered after the final dot
    tls: bool = False


class HostileReceiver:
    """`async with HostileReceiver(plan) as rx:`; rx.port, rx.txns, rx.delivered()."""

    def __init__(self, *plans: Plan) -> None:
        self.plans = plans or (Plan(),)  # connection i follows plans[i]; the last repeats
        self.port = 0
        self.connections = 0
        self.commands: list[bytes] = []
        self.txns: list[Txn] = []
        self.cut: list[bytes] = []  # what came of each DATA the client never ended
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HostileReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def served(self, timeout: float = 10) -> None:
        """Until every connection so far has ended (the client hung up, or its plan did):
        what the receiver recorded is then complete."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def delivered(self) -> set[str]:
        """Recipients this receiver accepted in a transaction whose whole body it got and
        answered with 2xx after the final dot: the only ones a client may call delivered."""
        return {
            address
            for t in self.txns
            if t.body is not None and t.final is not None and 200 <= t.final < 300
            for address, code in t.rcpts
            if code is not None and 200 <= code < 300
        }

    @property
    def mails(self) -> list[bytes]:
        return [c for c in self.commands if c[:4].upper() == b"MAIL"]

    @property
    def rcpt_lines(self) -> list[bytes]:
        return [c for c in self.commands if c[:4].upper() == b"RCPT"]

    def session(self, **settings: object) -> Session:
        """A client Session aimed at this receiver (plain, generous timeouts)."""
        cfg = DeliveryConfig.model_validate(
            {
                "tls": "none",
                "connect_timeout": 10,
                "command_timeout": 10,
                "data_timeout": 10,
                **settings,
            }
        )
        return Session(Target("mx.hostile.test", "127.0.0.1", 10), self.port, cfg, "mg.test")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        plan = self.plans[min(self.connections, len(self.plans) - 1)]
        self.connections += 1
        try:
            await self._converse(plan, reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client hung up on us, as it should on a hostile peer
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _converse(
        self, plan: Plan, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def say(answer: Say) -> bool:
            await asyncio.sleep(answer.delay)
            data = answer.wire()
            if data is None:
                return False
            writer.write(data)
            await writer.drain()
            return True

        tls = False
        txn: Txn | None = None
        if not await say(plan.greeting):
            return
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                return
            command = line.rstrip(b"\r\n")
            self.commands.append(command)
            verb = command[:4].upper()
            if verb == b"EHLO":
                offered = plan.extensions + (("STARTTLS",) if plan.tls and not tls else ())
                answer = plan.ehlo or Say(250, "hostile.test", offered, plan.ehlo_extra)
            elif verb == b"HELO":
                answer = plan.helo
            elif verb == b"STAR" and plan.tls and not tls:
                if not await say(plan.starttls):
                    return
                if plan.starttls.code != 220:
                    continue
                await writer.start_tls(plan.tls)
                tls = True
                continue
            elif verb == b"MAIL":
                txn = Txn(command, tls=tls)
                self.txns.append(txn)
                answer = plan.mail
            elif verb == b"RCPT":
                if txn is None:  # RCPT without MAIL: record it all the same
                    txn = Txn(b"", tls=tls)
                    self.txns.append(txn)
                answer = plan.rcpt[min(len(txn.rcpts), len(plan.rcpt) - 1)]
                address = command.partition(b"<")[2].partition(b">")[0].decode("utf-8", "replace")
                txn.rcpts.append((address, answer.code))
            elif verb == b"DATA":
                if not await say(plan.data):
                    return
                if plan.data.code == 354:
                    body = await self._body(reader)
                    if body is None:
                        return
                    if txn is not None:
                        txn.body = body
                        txn.final = plan.dot.code if plan.dot.raw is None else None
                    if not await say(plan.dot):
                        return
                    txn = None
                continue
            elif verb == b"RSET":
                txn, answer = None, plan.rset
            elif verb == b"QUIT":
                await say(Say(221, "2.0.0 bye"))
                return
            else:
                answer = Say(500, "5.5.2 unrecognised")
            if not await say(answer):
                return

    async def _body(self, reader: asyncio.StreamReader) -> bytes | None:
        """The message up to the final dot, or None when the client stopped short (what
        came of it is kept in `cut`)."""
        lines: list[bytes] = []
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                self.cut.append(b"".join(lines) + line)
                return None
            if line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b"..") else line)
