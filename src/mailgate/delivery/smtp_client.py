"""Speak SMTP to one destination host and turn every reply and error into per-recipient
Outcomes. Connection-level trouble comes back as one Outcome so the caller can try the
next MX.

A lean client on asyncio streams rather than aiosmtplib: aiosmtplib reads one reply per
command written, so it cannot pipeline (RFC 2920), and pipelining MAIL, every RCPT and
DATA in one write saves two round trips per message (docs/architecture.md has the
figures). Timeouts follow RFC 5321 section 4.5.3.2 through `delivery.*_timeout`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.config import DeliveryConfig
from mailgate.delivery.mx import Target
from mailgate.delivery.outcome import Outcome, from_reply, permanent, temporary

MAX_REPLY_LINES = 100  # a reply longer than this is a broken or hostile server
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str
    recipients: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class Response:
    code: int
    text: str  # the lines after the code, joined by "\n"


class ConnectionLost(Exception):
    """The connection broke, timed out or spoke something that is not SMTP."""


class _PlaintextRetry(Exception):
    """Opportunistic STARTTLS failed: start over without TLS."""


def tls_context(cfg: DeliveryConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
    if not cfg.verify_certificates:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def data_block(raw: bytes) -> bytes:
    """The DATA payload: CRLF line ends only (never a bare CR or LF), dot-stuffed,
    ending with the terminating line (RFC 5321 sections 2.3.8 and 4.5.2)."""
    body = _LEADING_DOT.sub(b"..", _LINE_ENDS.sub(b"\r\n", raw))
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class Connection:
    """One SMTP connection: replies in, commands out, EHLO extensions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.extensions: dict[str, str] = {}

    @classmethod
    async def open(
        cls,
        address: str,
        port: int,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[Connection, Response]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address, port, ssl=tls, server_hostname=server_hostname if tls else None
                ),
                timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None
        conn = cls(reader, writer)
        try:
            return conn, await conn.read(timeout)
        except ConnectionLost:
            conn.close()
            raise

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    async def read(self, timeout: float) -> Response:
        lines: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while len(lines) < MAX_REPLY_LINES:
                    line = await self.reader.readline()
                    if not line.endswith(b"\n"):
                        raise ConnectionLost("connection closed by the remote")
                    code = line[:3]
                    if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                        raise ConnectionLost(f"not an SMTP reply: {line[:80]!r}")
                    lines.append(line[4:].decode("utf-8", "replace").strip())
                    if line[3:4] != b"-":
                        return Response(int(code), "\n".join(lines))
        except TimeoutError:
            raise ConnectionLost(f"no reply within {timeout:g}s") from None
        except (OSError, ValueError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None
        raise ConnectionLost("reply too long")

    async def send(self, data: bytes, timeout: float) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError:
            raise ConnectionLost(f"could not send within {timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None

    async def command(self, line: bytes, timeout: float) -> Response:
        await self.send(line + b"\r\n", timeout)
        return await self.read(timeout)

    async def ehlo(self, name: str, timeout: float) -> Response:
        reply = await self.command(b"EHLO " + name.encode(), timeout)
        if 500 <= reply.code < 600:  # an old server: HELO, no extensions
            self.extensions = {}
            return await self.command(b"HELO " + name.encode(), timeout)
        if reply.code == 250:
            self.extensions = {}
            for line in reply.text.split("\n")[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params
        return reply

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.writer.start_tls(ctx, server_hostname=server_hostname)
        except TimeoutError:
            raise ConnectionLost("TLS handshake timed out") from None
        except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT", 5)
        except ConnectionLost:
            pass
        self.close()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class Session:
    """One connection to one target, reused for several transactions."""

    def __init__(
        self,
        target: Target,
        port: int,
        cfg: DeliveryConfig,
        ehlo: str,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.target, self.port, self.cfg, self.ehlo = target, port, cfg, ehlo
        self.conn: Connection | None = None
        self.tls = False
        self._on_close = on_close  # frees the per-host connection slot exactly once

    async def open(self, allow_tls: bool = True) -> Outcome | None:
        """Connect, EHLO and STARTTLS per policy; None when ready, else why not."""
        cfg, host, address = self.cfg, self.target.host, self.target.address
        implicit = bool(cfg.smarthost) and cfg.smarthost_tls == "implicit"
        try:
            conn, greeting = await Connection.open(
                address,
                self.port,
                cfg.connect_timeout,
                tls_context(cfg) if implicit else None,
                host,
            )
        except ConnectionLost as exc:
            return temporary(f"connect to {host}[{address}] failed: {exc}", host)
        self.conn, self.tls = conn, implicit
        try:
            if greeting.code != 220:
                await self.close()
                return from_reply(greeting.code, greeting.text, host)
            reply = await conn.ehlo(self.ehlo, cfg.command_timeout)
            if reply.code != 250:
                await self.close()
                return from_reply(reply.code, reply.text, host)
            problem = await self._secure(conn, allow_tls, implicit)
            if problem is not None:
                return problem
            return await self._login(conn)
        except _PlaintextRetry:
            return await self.open(allow_tls=False)
        except ConnectionLost as exc:
            await self.close()
            return temporary(f"session with {host}[{address}] failed: {exc}", host)

    @property
    def usable(self) -> bool:
        """False once the connection was dropped (the caller opens a new session)."""
        return self.conn is not None

    async def _secure(self, conn: Connection, allow_tls: bool, implicit: bool) -> Outcome | None:
        cfg, host = self.cfg, self.target.host
        wants_tls = cfg.tls != "none" and allow_tls and not implicit
        required = cfg.tls == "required" or (
            bool(cfg.smarthost) and cfg.smarthost_tls == "starttls"
        )
        if wants_tls and conn.supports("STARTTLS"):
            reply = await conn.command(b"STARTTLS", cfg.command_timeout)
            try:
                if reply.code != 220:
                    raise ConnectionLost(f"STARTTLS refused: {reply.code} {reply.text}")
                await conn.starttls(tls_context(cfg), host, cfg.command_timeout)
                # RFC 3207: the session starts over after STARTTLS
                if (await conn.ehlo(self.ehlo, cfg.command_timeout)).code != 250:
                    raise ConnectionLost("EHLO refused after STARTTLS")
                self.tls = True
            except ConnectionLost as exc:
                conn.close()  # keeps the host slot for the plaintext retry
                self.conn = None
                if not required:
                    # Opportunistic TLS falls back to plaintext on a failed handshake, as
                    # Postfix does at security level "may"; "required" defers instead.
                    raise _PlaintextRetry from None
                await self.close()
                return temporary(f"TLS with {host} failed: {exc}", host, enhanced="4.7.5")
        elif required and not implicit:
            await self.close()
            return temporary(
                f"{host} does not offer STARTTLS, which is required", host, enhanced="4.7.5"
            )
        return None

    async def _login(self, conn: Connection) -> Outcome | None:
        cfg, host = self.cfg, self.target.host
        if not (cfg.smarthost and cfg.smarthost_username):
            return None
        if not self.tls:
            await self.close()
            return temporary(
                "refusing to AUTH to the smarthost without TLS", host, enhanced="4.7.5"
            )
        user, password = cfg.smarthost_username, cfg.smarthost_password
        mechanisms = conn.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            reply = await conn.command(b"AUTH PLAIN " + token.encode(), cfg.command_timeout)
        else:
            reply = await conn.command(b"AUTH LOGIN", cfg.command_timeout)
            for answer in (user, password):
                if reply.code != 334:
                    break
                reply = await conn.command(base64.b64encode(answer.encode()), cfg.command_timeout)
        if reply.code != 235:
            await self.close()
            return from_reply(reply.code, reply.text, host)
        return None

    async def send(self, tx: Transaction) -> dict[str, Outcome] | Outcome:
        """Per-recipient outcomes, or one Outcome when the connection itself failed."""
        conn = self.conn
        assert conn is not None
        host, cfg = self.target.host, self.cfg
        limit = conn.extensions.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < len(tx.raw):
            # RFC 1870: the server said it would refuse this; do not send it to find out
            too_big = permanent(
                f"Message size {len(tx.raw)} exceeds {host}'s limit of {limit}", "5.3.4", 552, host
            )
            return dict.fromkeys(tx.recipients, too_big)
        try:
            mail = b"MAIL FROM:<" + tx.sender.encode() + b">"
            if conn.supports("SIZE"):
                mail += b" SIZE=%d" % len(tx.raw)
            if not tx.sender.isascii() and conn.supports("SMTPUTF8"):
                mail += b" SMTPUTF8"
            envelope = [mail] + [b"RCPT TO:<" + r.encode() + b">" for r in tx.recipients]
            if conn.supports("PIPELINING"):
                # RFC 2920: the envelope and DATA in one write, then read every reply
                await conn.send(b"\r\n".join([*envelope, b"DATA"]) + b"\r\n", cfg.command_timeout)
                replies = [await conn.read(cfg.command_timeout) for _ in envelope]
                data_reply: Response | None = await conn.read(cfg.command_timeout)
            else:
                replies, data_reply = [], None
                for line in envelope:
                    replies.append(await conn.command(line, cfg.command_timeout))
                    if replies[0].code != 250:
                        break
            return await self._finish(conn, tx, replies, data_reply)
        except ConnectionLost as exc:
            await self.close()
            # The remote may have taken the message before the connection broke (a stall
            # after the dot): retrying may duplicate, never lose.
            return temporary(f"connection to {host} lost: {exc}", host)

    async def _finish(
        self,
        conn: Connection,
        tx: Transaction,
        replies: list[Response],
        data_reply: Response | None,
    ) -> dict[str, Outcome]:
        host, cfg = self.target.host, self.cfg
        mail = replies[0]
        if mail.code != 250:
            await self._abandon(conn, data_reply)
            return dict.fromkeys(tx.recipients, from_reply(mail.code, mail.text, host))
        results: dict[str, Outcome] = {}
        accepted: list[str] = []
        for rcpt, reply in zip(tx.recipients, replies[1:], strict=True):
            if reply.code in (250, 251):
                accepted.append(rcpt)
            else:
                results[rcpt] = from_reply(reply.code, reply.text, host)
        if not accepted:
            await self._abandon(conn, data_reply)
            return results
        if data_reply is None:
            data_reply = await conn.command(b"DATA", cfg.command_timeout)
        if data_reply.code != 354:
            outcome = from_reply(data_reply.code, data_reply.text, host)
            await self._abandon(conn, None)
        else:
            await conn.send(data_block(tx.raw), cfg.data_timeout)
            final = await conn.read(cfg.data_timeout)
            outcome = from_reply(final.code, final.text, host)
        for rcpt in accepted:
            results[rcpt] = outcome
        return results

    async def _abandon(self, conn: Connection, data_reply: Response | None) -> None:
        """End a transaction that will carry no message, keeping the connection usable."""
        if data_reply is not None and data_reply.code == 354:
            # A pipelined DATA was accepted though no recipient was: the transaction
            # cannot be ended cleanly without sending a message, so drop the connection.
            await self.close()
            return
        if (await conn.command(b"RSET", self.cfg.command_timeout)).code != 250:
            await self.close()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.quit()
            self.conn = None
        release = self._on_close
        if release is not None:
            self._on_close = None
            release()
