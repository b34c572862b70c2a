"""Speak SMTP to one destination host and turn every reply and error into per-recipient
Outcomes. Connection-level trouble comes back as one Outcome so the caller can try the
next MX.

A lean client on asyncio streams rather than aiosmtplib: aiosmtplib reads one reply per
command written, so it cannot pipeline (RFC 2920), and pipelining MAIL, every RCPT and
DATA in one write saves two round trips per message (docs/architecture.md has the
figures). Timeouts follow RFC 5321 section 4.5.3.2 through `delivery.*_timeout`.

Replies are trusted only in step: each is read for exactly one command, checked against
what that command may be answered with (outcome.Step), and any byte the peer sends
before we speak again is a protocol error that ends the connection. So a stray 2xx, a
double greeting or plaintext injected after the 220 to STARTTLS (CVE-2021-38371) can
never be read as a later command's reply; only a 2xx after the final dot delivers.

The exceptions (errors.ConnectionLost, ProtocolError, PlaintextRetry) stay inside this
module: Session turns each into an Outcome.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.addresses import ascii_domain, needs_smtputf8
from mailgate.config import DeliveryConfig
from mailgate.delivery.mx import Target
from mailgate.delivery.outcome import (
    Outcome,
    Step,
    Verdict,
    clean_text,
    from_reply,
    is_failure,
    permanent,
    protocol_error,
    temporary,
)
from mailgate.errors import ConnectionLost, PlaintextRetry, ProtocolError
from mailgate.wire import crlf_lines

MAX_REPLY_LINES = 100  # a reply longer than this is a broken or hostile server
REPLY_LINE_LIMIT = 512  # characters kept of one reply line (RFC 5321: 512 octets a line)
# An empty line: two line ends in a row (atomic groups, so one CRLF is never read as CR
# then LF), or a line end at the very start (a message with no header at all).
_EMPTY_LINE = re.compile(rb"\A(?>\r\n|\r|\n)|(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
# What must never reach the inside of MAIL FROM:<...> / RCPT TO:<...>: line ends (command
# injection), angle brackets (parameter injection), controls and line separators.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f<>\u2028\u2029]")
_QUOTED_LOCAL = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    # the door that took it in refused any bare CR or LF (the SMTP relay): data_block
    # need not look for one (~150 µs a 100 KB message)
    crlf_only: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    code: int
    text: str  # the lines after the code, joined by "\n"


def tls_context(cfg: DeliveryConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
    if not cfg.verify_certificates:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def data_block(raw: bytes, crlf_only: bool = False) -> bytes:
    """The DATA payload: CRLF line ends only (never a bare CR or LF), dot-stuffed,
    ending with the terminating line (RFC 5321 sections 2.3.8 and 4.5.2). Byte replaces,
    not regex passes (which cost about 0.5 ms per 100 KB); signed mail is CRLF-only
    already, so nothing a DKIM signature covers changes here. crlf_only: raw is known
    to have no bare CR or LF (not checked again)."""
    body = raw if crlf_only else crlf_lines(raw)
    if body.rfind(b"\r\n.") >= 0:  # backward: skips by CR, not by the text's dots
        body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def unsafe_on_wire(address: str) -> bool:
    """True when the address could break out of `<...>` on the command line. Both doors
    validate addresses; this keeps a slip there from becoming command injection. A space
    is allowed only inside a well-formed quoted local part."""
    if _UNSAFE.search(address):
        return True
    if " " in address:
        local, _, domain = address.rpartition("@")
        return " " in domain or _QUOTED_LOCAL.fullmatch(local) is None
    return False


def reply_line(text: bytes) -> str:
    """A reply line's text as kept: UTF-8 (RFC 6531 allows it) with bad bytes as U+FFFD,
    cleaned like any reply text, at most REPLY_LINE_LIMIT characters (RFC 5321
    4.5.3.1.5), so a reply of 100 long lines costs little memory."""
    return clean_text(text.decode("utf-8", "replace"), REPLY_LINE_LIMIT)


def header_end(raw: bytes) -> int:
    """Where the header block ends: the first empty line, with any line ends data_block
    turns into CRLF (so bare LF or CR count); len(raw) when there is none."""
    if not raw.startswith((b"\r", b"\n")):
        # Stored mail is CRLF only: the first CRLF CRLF is the answer when every line
        # end before it is a CRLF. memmem and counts, where the regex tried each byte.
        at = raw.find(b"\r\n\r\n")
        if at > 0:
            head = raw[:at]
            pairs = head.count(b"\r\n")
            if head.count(b"\r") == pairs and head.count(b"\n") == pairs:
                return at
    m = _EMPTY_LINE.search(raw)
    return len(raw) if m is None else m.start()


def headers_are_ascii(raw: bytes) -> bool:
    return raw.isascii() or raw[: header_end(raw)].isascii()


@dataclass(frozen=True, slots=True)
class Envelope:
    """What goes on the wire for one transaction, and who cannot be sent at all."""

    mail: bytes | None  # the MAIL FROM line; None when the sender itself cannot go
    rcpts: tuple[tuple[str, bytes], ...]  # (recipient as queued, RCPT TO line)
    refused: dict[str, Outcome]  # recipients settled here, never written


def envelope(tx: Transaction, extensions: dict[str, str]) -> Envelope:
    """MAIL and RCPT lines for this peer. UTF-8 goes on the wire only with SMTPUTF8
    (RFC 6531); without it a UTF-8 domain is sent as A-labels, and a UTF-8 local part or
    a UTF-8 header (RFC 6532) cannot be sent at all (553 5.6.7). An 8-bit body with ASCII
    headers is plain 8BITMIME and goes."""
    if "SMTPUTF8" not in extensions and not headers_are_ascii(tx.raw):
        # RFC 6531 3.2: such a message needs SMTPUTF8. It bounces rather than being
        # downgraded, which would rewrite the addresses and text the sender chose.
        cannot = permanent(
            "The message has UTF-8 headers and the receiving server does not offer SMTPUTF8",
            "5.6.7",
            553,
        )
        return Envelope(None, (), dict.fromkeys(tx.recipients, cannot))
    addresses_ascii = tx.sender.isascii() and all(r.isascii() for r in tx.recipients)
    utf8 = "SMTPUTF8" in extensions and not (addresses_ascii and headers_are_ascii(tx.raw))

    def wire(address: str, syntax: str) -> str | Outcome:
        if unsafe_on_wire(address):
            return permanent(f"Refusing to send a malformed address: {address!a}", syntax, 553)
        if utf8 or address.isascii():
            return address
        if needs_smtputf8(address):
            return permanent(
                f"{address} needs SMTPUTF8, which the receiving server does not offer",
                "5.6.7",
                553,
            )
        local, _, domain = address.rpartition("@")
        try:
            return f"{local}@{ascii_domain(domain)}"
        except ValueError:  # idna.IDNAError: refused at the doors, so only a slip
            return permanent(f"Bad domain in {address!a}", syntax, 553)

    sender = wire(tx.sender, "5.1.7")
    if isinstance(sender, Outcome):
        return Envelope(None, (), dict.fromkeys(tx.recipients, sender))
    mail = b"MAIL FROM:<" + sender.encode() + b">"
    if "SIZE" in extensions:
        mail += b" SIZE=%d" % len(tx.raw)
    if utf8:
        mail += b" SMTPUTF8"
    rcpts: list[tuple[str, bytes]] = []
    refused: dict[str, Outcome] = {}
    for rcpt in tx.recipients:
        address = wire(rcpt, "5.1.3")
        if isinstance(address, Outcome):
            refused[rcpt] = address
        else:
            rcpts.append((rcpt, b"RCPT TO:<" + address.encode() + b">"))
    return Envelope(mail, tuple(rcpts), refused)


def command_lines(env: Envelope) -> list[bytes]:
    """MAIL and every RCPT."""
    assert env.mail is not None  # Session._envelope returns only envelopes that go
    return [env.mail, *(line for _, line in env.rcpts)]


def pipelined(env: Envelope) -> bytes:
    """MAIL, every RCPT and DATA as one group (RFC 2920)."""
    return b"\r\n".join([*command_lines(env), b"DATA"]) + b"\r\n"


def unfit(step: Step, reply: Response) -> str | None:
    """Why `reply` cannot answer `step`'s command in a pipelined group, or None: it must
    be the command's success or a failure."""
    if step.accepts(reply.code) or is_failure(reply.code):
        return None
    return f"{step.label} answered {reply.code} {clean_text(reply.text)}"


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A transaction whose envelope left with the last message's data, and its replies."""

    tx: Transaction
    env: Envelope
    replies: list[Response]
    data_reply: Response


class Connection:
    """One SMTP connection: replies in, commands out, EHLO extensions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.extensions: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # asked once: each ask is a getpid
        self._expired = False  # a reply's deadline passed: every read after fails

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

    def unread(self) -> int:
        """Bytes received and not yet read as a reply. StreamReader has no public way to
        ask; `_buffer` is its buffer in every CPython 3 (0 elsewhere: the check is off)."""
        return len(getattr(self.reader, "_buffer", b""))

    async def read(self, timeout: float) -> Response:
        """One reply: every line must carry the same code (RFC 5321 4.2.1), else a
        multiline reply could begin with a refusal and end with a 250. Each line's text is
        cleaned of control characters and cut to a reply line's length."""
        lines: list[str] = []
        first = b""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while len(lines) < MAX_REPLY_LINES:
                line = await self._line(deadline)
                if not line.endswith(b"\n"):
                    raise ConnectionLost("connection closed by the remote")
                code = line[:3]
                if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                    raise ProtocolError(f"not an SMTP reply: {line[:80]!r}")
                first = first or code
                if code != first:
                    raise ProtocolError(
                        f"reply lines disagree on the code: {first.decode()} then {code.decode()}"
                    )
                lines.append(reply_line(line[4:]))
                if line[3:4] != b"-":
                    return Response(int(code), "\n".join(lines))
        except TimeoutError:
            raise ConnectionLost(f"no reply within {timeout:g}s") from None
        except (OSError, ValueError, asyncio.LimitOverrunError, ssl.SSLError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None
        raise ProtocolError("reply too long")

    async def _line(self, deadline: float) -> bytes:
        """The next line, by `deadline` (the whole reply's, so a server dripping lines
        cannot stretch it). A line already received is taken without a timer: replies to
        pipelined commands mostly arrive together, and a timer per line cost more than
        the line."""
        if b"\n" in getattr(self.reader, "_buffer", b""):
            return await self.reader.readline()
        # A bare timer, not asyncio.timeout_at: that looks up the current task, which in
        # Python 3.11 is a getpid() system call, on every wait for a reply.
        assert self._loop is not None
        timer = self._loop.call_at(deadline, self._expire)
        try:
            line = await self.reader.readline()
        finally:
            timer.cancel()
        if self._expired:  # fired as the line came in: late all the same
            raise TimeoutError
        return line

    def _expire(self) -> None:
        """No reply in time: the waiting readline raises, and so does every read after
        it (the caller treats the connection as lost)."""
        self._expired = True
        self.reader.set_exception(TimeoutError())

    async def send(self, data: bytes, timeout: float, what: str = "") -> None:
        if self.unread():
            # Every reply we asked for has been read: anything more was not asked for and
            # would be taken as the answer to what we are about to send.
            what = what or data[:4].decode("ascii", "replace")
            raise ProtocolError(f"unsolicited data before {what}")
        try:
            self.writer.write(data)
            transport = self.writer.transport
            if transport.is_closing():
                raise ConnectionLost("connection closed")
            if transport.get_write_buffer_size() == 0:
                return  # all handed to the kernel: nothing to wait for, no timer to make
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError:
            raise ConnectionLost(f"could not send within {timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None

    async def command(self, line: bytes, timeout: float) -> Response:
        await self.send(line + b"\r\n", timeout)
        return await self.read(timeout)

    async def ehlo(self, name: str, timeout: float) -> tuple[Step, Response]:
        reply = await self.command(b"EHLO " + name.encode(), timeout)
        if 500 <= reply.code < 600:  # an old server: HELO, no extensions
            self.extensions = {}
            return Step.HELO, await self.command(b"HELO " + name.encode(), timeout)
        if reply.code == 250:
            self.extensions = {}
            for line in reply.text.split("\n")[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params
        return Step.EHLO, reply

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str, timeout: float) -> None:
        if self.unread():
            # CVE-2021-38371 class: plaintext sent after the 220 would be read as the first
            # reply inside TLS. A peer (or a man in the middle) doing so is not trusted.
            raise ProtocolError("plaintext after the 220 to STARTTLS (reply injection)")
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
        # the transaction whose envelope went out with the last one's data (send's `then`)
        self._ahead: _Ahead | None = None

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
        except ProtocolError as exc:  # a greeting that is not SMTP
            return protocol_error(f"{host}[{address}]: {exc}", host)
        except ConnectionLost as exc:
            return temporary(f"connect to {host}[{address}] failed: {exc}", host)
        self.conn, self.tls = conn, implicit
        try:
            if not Step.GREETING.accepts(greeting.code):
                return await self._refused(greeting, Step.GREETING)
            step, reply = await conn.ehlo(self.ehlo, cfg.command_timeout)
            if not step.accepts(reply.code):
                return await self._refused(reply, step)
            problem = await self._secure(conn, allow_tls, implicit)
            if problem is not None:
                return problem
            return await self._login(conn)
        except PlaintextRetry:
            return await self.open(allow_tls=False)
        except ProtocolError as exc:
            await self.drop()
            return protocol_error(f"{host}[{address}]: {exc}", host)
        except ConnectionLost as exc:
            await self.close()
            return temporary(f"session with {host}[{address}] failed: {exc}", host)

    async def _refused(self, reply: Response, step: Step) -> Outcome:
        """End the session on a reply that does not let it go on: QUIT after a refusal,
        drop without a word after a reply that makes no sense there."""
        await (self.close() if is_failure(reply.code) else self.drop())
        return from_reply(reply.code, reply.text, self.target.host, step)

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
                if not Step.STARTTLS.accepts(reply.code):
                    raise ConnectionLost(f"STARTTLS refused: {reply.code} {reply.text}")
                await conn.starttls(tls_context(cfg), host, cfg.command_timeout)
                # RFC 3207: the session starts over after STARTTLS
                step, again = await conn.ehlo(self.ehlo, cfg.command_timeout)
                if not step.accepts(again.code):
                    raise ConnectionLost(f"{step.label} refused after STARTTLS")
                self.tls = True
            except ProtocolError:
                raise  # injected data: deferred, never retried in plaintext on its word
            except ConnectionLost as exc:
                conn.close()  # keeps the host slot for the plaintext retry
                self.conn = None
                if not required:
                    # Opportunistic TLS falls back to plaintext on a failed handshake, as
                    # Postfix does at security level "may"; "required" defers instead.
                    raise PlaintextRetry from None
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
        if not Step.AUTH.accepts(reply.code):
            return await self._refused(reply, Step.AUTH)
        return None

    def _envelope(self, conn: Connection, tx: Transaction) -> Envelope | dict[str, Outcome]:
        """The transaction's envelope for this peer, or every recipient's outcome when
        nothing of it may be sent (over the peer's SIZE, no sendable address)."""
        host = self.target.host
        limit = conn.extensions.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < len(tx.raw):
            # RFC 1870: the server said it would refuse this; do not send it to find out
            too_big = permanent(
                f"Message size {len(tx.raw)} exceeds {host}'s limit of {limit}", "5.3.4", 552, host
            )
            return dict.fromkeys(tx.recipients, too_big)
        env = envelope(tx, conn.extensions)
        if env.mail is None or not env.rcpts:
            return env.refused  # nothing that may be sent: no transaction at all
        return env

    async def send(
        self, tx: Transaction, then: Transaction | None = None
    ) -> dict[str, Outcome] | Outcome:
        """Per-recipient outcomes, or one Outcome when the connection itself failed.

        `then`: the transaction the caller sends next on this session. With PIPELINING
        its MAIL, RCPT and DATA leave in the same write as this one's data and final dot
        (RFC 2920 3.1: message content may open a group), saving a write and a round trip
        a message. Its replies are read here too, and this message's reply stands only if
        they are in step; the next send must be `send(then)` while the session is usable
        (a session closed in between is dropped, never sent a QUIT the peer would read as
        message content)."""
        conn = self.conn
        assert conn is not None
        host, cfg = self.target.host, self.cfg
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.tx is not tx:
            await self.drop()  # its DATA may be open: only a drop ends it unsent
            raise RuntimeError("send() after send(tx, then) must send `then`")
        try:
            if ahead is not None:  # its envelope went out, and its replies were read
                env, replies, data_reply = ahead.env, ahead.replies, ahead.data_reply
            else:
                prepared = self._envelope(conn, tx)
                if not isinstance(prepared, Envelope):
                    return prepared
                env = prepared
                if conn.supports("PIPELINING"):
                    # RFC 2920: the envelope and DATA in one write, one reply per command
                    await conn.send(pipelined(env), cfg.command_timeout)
                    replies, data_reply = await self._group(conn, env)
                else:
                    replies, data_reply = [], None
                    for line in command_lines(env):
                        replies.append(await conn.command(line, cfg.command_timeout))
                        if not Step.MAIL.accepts(replies[0].code):
                            break
            results = await self._finish(conn, tx, env, replies, data_reply, then)
        except ProtocolError as exc:
            await self.drop()
            return protocol_error(f"{host}: {exc}", host)
        except ConnectionLost as exc:
            # Dropped, not QUIT: the peer may be in DATA, reading anything as content.
            await self.drop()
            # The remote may have taken the message before the connection broke (a stall
            # after the dot): retrying may duplicate, never lose.
            return temporary(f"connection to {host} lost: {exc}", host)
        except BaseException:  # cancelled mid-exchange: a DATA may be open, so no QUIT
            await self.drop()
            raise
        results.update(env.refused)
        return results

    async def _group(self, conn: Connection, env: Envelope) -> tuple[list[Response], Response]:
        """The replies to a pipelined MAIL, its RCPTs and DATA, read in step. ProtocolError
        when they cannot answer those commands (`unfit`, a success after a refused MAIL)
        or more came than were asked for: a reply missing or extra shifts the rest, and
        none of them could be trusted."""
        timeout = self.cfg.command_timeout
        replies: list[Response] = []
        for step in [Step.MAIL, *(Step.RCPT for _ in env.rcpts), Step.DATA]:
            reply = await conn.read(timeout)
            problem = unfit(step, reply)
            if problem is not None:  # at once: the rest may never come
                raise ProtocolError(problem)
            replies.append(reply)
        problem = None
        if is_failure(replies[0].code) and not all(is_failure(r.code) for r in replies[1:]):
            # RFC 2920 3.1: after a refused MAIL, RCPT and DATA fail too; a success means
            # a reply was read for the wrong command
            problem = "a command after a refused MAIL was accepted"
        elif conn.unread():
            after = "the message" if Step.DATA.accepts(replies[-1].code) else "the next command"
            problem = f"unsolicited data before {after}"
        if problem is not None:
            raise ProtocolError(problem)
        data_reply = replies.pop()
        return replies, data_reply

    async def _finish(
        self,
        conn: Connection,
        tx: Transaction,
        env: Envelope,
        replies: list[Response],
        data_reply: Response | None,
        then: Transaction | None,
    ) -> dict[str, Outcome]:
        host, cfg = self.target.host, self.cfg
        queued = [rcpt for rcpt, _ in env.rcpts]
        mail = replies[0]
        if not Step.MAIL.accepts(mail.code):
            refused = from_reply(mail.code, mail.text, host, Step.MAIL)
            if not await self._abandon(conn, data_reply, in_step=is_failure(mail.code)):
                refused = self._unsure(refused)
            return dict.fromkeys(queued, refused)
        results: dict[str, Outcome] = {}
        accepted: list[str] = []
        for rcpt, reply in zip(queued, replies[1:], strict=True):
            if Step.RCPT.accepts(reply.code):
                accepted.append(rcpt)
                continue
            results[rcpt] = outcome = from_reply(reply.code, reply.text, host, Step.RCPT)
            if not is_failure(reply.code):
                # Replies and commands no longer pair up: none of them can be trusted.
                await self.drop()
                return dict.fromkeys(queued, outcome)
        if not accepted:
            if not await self._abandon(conn, data_reply, in_step=True):
                results = {rcpt: self._unsure(o) for rcpt, o in results.items()}
            return results
        if data_reply is None:
            data_reply = await conn.command(b"DATA", cfg.command_timeout)
        if not Step.DATA.accepts(data_reply.code):
            outcome = from_reply(data_reply.code, data_reply.text, host, Step.DATA)
            if not await self._abandon(conn, None, in_step=is_failure(data_reply.code)):
                results = {rcpt: self._unsure(o) for rcpt, o in results.items()}
                outcome = self._unsure(outcome)
        else:
            outcome = await self._data(conn, tx, then)
        for rcpt in accepted:
            results[rcpt] = outcome
        return results

    async def _data(self, conn: Connection, tx: Transaction, then: Transaction | None) -> Outcome:
        """Send the message after its 354, with `then`'s envelope when it may go ahead,
        and read the reply after the final dot."""
        host, cfg = self.target.host, self.cfg
        block = data_block(tx.raw, tx.crlf_only)
        following = self._following(conn, then)
        if following is not None:
            block += pipelined(following)
        await conn.send(block, cfg.data_timeout, "the message")
        final = await conn.read(cfg.data_timeout)
        outcome = from_reply(final.code, final.text, host, Step.DOT)
        if not (is_failure(final.code) or Step.DOT.accepts(final.code)):
            await self.drop()  # a senseless reply: start afresh
        elif following is None or then is None:
            if conn.unread():
                await self.drop()  # more than one reply: start afresh
        else:
            # The next group's replies mostly arrive with this one. This message's reply
            # stands only if they are in step: were the reply to its dot missing, the
            # next MAIL's 250 would have been read as it, and the 354 would then answer
            # a RCPT. Then this message may have been taken: deferred, not bounced or
            # counted delivered on a reply that may be another command's. A group cut
            # short by the peer closing (421 to MAIL, then the close: a server's usual
            # way to limit messages a connection) leaves the reply standing, as it did
            # when nothing went ahead; the next message goes on a fresh connection.
            try:
                replies, data_reply = await self._group(conn, following)
            except ProtocolError as exc:
                await self.drop()
                return protocol_error(f"{host}: {exc}, after the message's data", host)
            except ConnectionLost:
                await self.drop()
                return outcome
            self._ahead = _Ahead(then, following, replies, data_reply)
        return outcome

    def _unsure(self, outcome: Outcome) -> Outcome:
        """A refusal read from replies found out of step afterwards (RSET answered
        otherwise than 250): it may answer another command, so the recipient is deferred."""
        if outcome.verdict is Verdict.TEMPORARY:
            return outcome
        text = outcome.reply.text if outcome.reply is not None else ""
        host = self.target.host
        return protocol_error(f"{host}: replies out of step after {text!r}", host)

    def _following(self, conn: Connection, then: Transaction | None) -> Envelope | None:
        """`then`'s envelope when it may leave with this message's data: the peer
        pipelines and some of it may be sent at all (else it goes the usual way)."""
        if then is None or not conn.supports("PIPELINING"):
            return None
        prepared = self._envelope(conn, then)
        return prepared if isinstance(prepared, Envelope) else None

    async def _abandon(self, conn: Connection, data_reply: Response | None, in_step: bool) -> bool:
        """End a transaction that will carry no message, keeping the connection usable
        when the peer is still in step with us. False when RSET was answered with
        neither 250 nor a failure: the replies were out of step (a late 354 behind a
        shifted group), so the refusals read before may answer other commands."""
        if not in_step or (data_reply is not None and not is_failure(data_reply.code)):
            # A protocol error, or a pipelined DATA not refused though no recipient was
            # accepted: the transaction cannot be ended cleanly, so drop the connection.
            await self.drop()
            return True
        try:
            reply = await conn.command(b"RSET", self.cfg.command_timeout)
        except ConnectionLost:
            await self.drop()  # the outcomes already read stand
            return True
        if reply.code != 250:
            await self.drop()  # a failure (421 closing): the outcomes read stand
            return is_failure(reply.code)
        return True

    async def close(self) -> None:
        """QUIT and close, then free the host slot. With a transaction sent ahead and
        not finished, a drop: the peer may be reading message content, and would take
        a QUIT for part of it."""
        if self._ahead is not None:
            await self.drop()
            return
        if self.conn is not None:
            await self.conn.quit()
            self.conn = None
        self._release()

    async def drop(self) -> None:
        """Close without QUIT: the peer is out of step, and waiting on it costs a timeout."""
        self._ahead = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self._release()

    def _release(self) -> None:
        release = self._on_close
        if release is not None:
            self._on_close = None
            release()
