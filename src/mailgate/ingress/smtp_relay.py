"""The SMTP relay listener: a lean asyncio protocol in front of the one door.

Why not aiosmtpd: its DATA path reads line by line through a StreamReader, which
measured 257 msg/s for 100 KB mail here with no storage at all. This protocol keeps
one bytearray per connection and finds the end of DATA with one `find` per chunk,
so large mail costs a few memory copies, not a Python call per line.

The 250 after the final dot is sent only after accept() has returned, i.e. after
the message is committed. Each connection is one `Session`; `SmtpRelay` owns the
listening sockets and the connection limits.

Memory per connection is bounded both ways: unread input by READ_LIMIT (reading
pauses), DATA by max_message_size (past it the stream is counted and dropped), and
unread output by the transport's write high-water mark: while a client does not read
our replies we read none of its commands, and after idle_timeout we drop it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, cast

from mailgate import keys
from mailgate.auth_guard import AuthGuard
from mailgate.config import SmtpConfig
from mailgate.errors import SessionClosed
from mailgate.ingress.accept import (
    Accepted,
    Client,
    Door,
    IdempotencyRequest,
    Refusal,
    Rule,
    Submission,
    authorise_sender,
)
from mailgate.ingress.smtp_rules import (
    data_problem,
    header_facts,
    mailbox_key,
    param_problem,
    parse_path,
    transaction_key,
    unstuff,
)
from mailgate.lifecycle import Lifecycle, Phase
from mailgate.models import ApiKey, Reply, Scope, Source
from mailgate.shared import SharedCounts
from mailgate.store import Store

log = logging.getLogger("mailgate.smtp")

READ_LIMIT = 1 << 20  # pause reading when this much is buffered and not yet handled
WRITE_HIGH_WATER = 64 * 1024  # unread replies held before we stop reading commands
OUT_BATCH = 64  # pipelined replies gathered before they are handed to the transport
# Parameters of the extensions we advertise (SIZE, 8BITMIME, SMTPUTF8, AUTH: RFC 4954
# 5 lets a client pass AUTH=<> on MAIL; we ignore its value). No DSN, so none on RCPT.
MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8", "AUTH"})
RCPT_PARAMS: frozenset[str] = frozenset()
# Commands after which a client must wait for our reply (RFC 2920 section 3.1).
SYNC_VERBS = {"EHLO", "HELO", "STARTTLS", "QUIT"}
ALL_CLIENTS = "*"  # the name the server's total of connections is counted under


class Session(asyncio.Protocol):
    """One SMTP connection."""

    def __init__(self, relay: SmtpRelay, *, implicit_tls: bool = False) -> None:
        self.relay = relay
        self.cfg = relay.cfg
        self.buf = bytearray()
        self.loop = asyncio.get_running_loop()
        # One future per wait for input, and one watchdog timer per session for the
        # idle and session time limits: asyncio.wait_for per line made a task and a
        # timer for every command (about a tenth of the loop's time under load).
        self._waiter: asyncio.Future[None] | None = None
        self._wait_until = 0.0  # time.monotonic() by which input must come
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = 0.0
        self._timed_out = False
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.write_blocked = False  # the transport's buffer is over its high-water mark
        self.drained = asyncio.Event()
        self.out: list[bytes] = []
        self.client_ip = "unknown"
        self.tls = implicit_tls
        self.esmtp = False
        self.helo: str | None = None
        self.key: ApiKey | None = None
        self.auth_failures = 0
        self.trusted: bool | None = None  # the client's address is in trusted_networks
        self.deadline = float("inf")  # time.monotonic() by which the whole session ends
        self.bad_commands = 0
        self.task: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.mail_from: str | None = None
        self.smtputf8 = False  # MAIL FROM carried SMTPUTF8: UTF-8 addresses allowed
        self.rcpts: list[str] = []
        self.rcpt_keys: set[str] = set()

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        tr = cast(asyncio.Transport, transport)
        if self.transport is not None:  # start_tls hands us the TLS transport
            self.transport = tr
            return
        self.transport = tr
        tr.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        self.task = self.loop.create_task(self._run())
        self.relay.sessions.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()
        if len(self.buf) > READ_LIMIT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self.write_blocked = True
        self.drained.clear()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.drained.set()

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.drained.set()
        self.relay.sessions.discard(self)

    # -- output ------------------------------------------------------------------
    def reply(self, r: Reply) -> None:
        text = f"{r.enhanced} {r.text}" if self.esmtp and r.enhanced else r.text
        self.out.append(f"{r.code} {text}\r\n".encode())

    def raw_reply(self, line: str) -> None:
        self.out.append(line.encode() + b"\r\n")

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    async def _backpressure(self) -> None:
        """Hand gathered replies over; while the client is not reading them, read no
        more of its commands. A client that stays blocked for idle_timeout is dropped
        (aborted: closing politely would wait for it to read)."""
        if len(self.out) >= OUT_BATCH:
            self.flush()
        if not self.write_blocked:
            return
        try:
            await asyncio.wait_for(self.drained.wait(), self.cfg.idle_timeout)
        except TimeoutError:
            log.info("smtp: %s stopped reading replies; dropped", self.client_ip)
            if self.transport is not None:
                self.transport.abort()
            raise SessionClosed from None
        if self.closed:
            raise SessionClosed

    def close_with(self, r: Reply, *, enhanced: bool = False) -> NoReturn:
        """Reply and hang up. `enhanced` adds the status code before EHLO too, as
        Postfix does for its greeting-time refusals (clients log it, none parse it)."""
        if enhanced and not self.esmtp:
            self.raw_reply(f"{r.code} {r.enhanced} {r.text}")
        else:
            self.reply(r)
        self.flush()
        if self.transport is not None:
            self.transport.close()
        raise SessionClosed

    # -- input ---------------------------------------------------------------------
    def _resume(self) -> None:
        if self.paused and len(self.buf) < READ_LIMIT // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_more(self) -> None:
        """Until more input, the end of input, or the idle or session limit (421). Every
        wait for input (a command, an AUTH answer, DATA) comes here, so none can outlast
        the session's deadline."""
        self.flush()
        if self.closed:
            raise SessionClosed
        self._resume()
        now = time.monotonic()
        until = min(now + self.cfg.idle_timeout, self.deadline)
        if until <= now:
            self.close_with(Reply(421, "4.4.2", "Session time limit exceeded"))
        self._wait_until = until
        if self._watchdog is None or self._watchdog_at > until:
            self._arm_watchdog(until, now)
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._timed_out:
            self.close_with(Reply(421, "4.4.2", "Timeout exceeded, closing"))

    def _arm_watchdog(self, at: float, now: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog_at = at
        self._watchdog = self.loop.call_later(max(at - now, 0.0), self._check_watchdog)

    def _check_watchdog(self) -> None:
        """Fires at the earliest moment the current wait could be over its limit; a
        wait that began later is re-armed for its own limit, so a busy session costs
        one timer per idle_timeout, not one per command."""
        self._watchdog = None
        if self._waiter is None or self._waiter.done():
            return  # not waiting for input now: the next wait arms it again
        now = time.monotonic()
        if now >= self._wait_until:
            self._timed_out = True
            self._waiter.set_result(None)
        else:
            self._arm_watchdog(self._wait_until, now)

    async def read_line(self) -> bytes | None:
        """The next command line without its line end; None when it was too long."""
        limit = self.cfg.max_command_length
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                if len(line) + 1 > limit:
                    return None
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > limit:  # discard the overlong line as it streams in
                self.buf.clear()
                await self._skip_line()
                return None
            await self._wait_more()

    async def _skip_line(self) -> None:
        while True:
            await self._wait_more()
            nl = self.buf.find(b"\n")
            if nl >= 0:
                del self.buf[: nl + 1]
                return
            self.buf.clear()

    async def read_data(self) -> tuple[bytes | None, int]:
        """The DATA section up to CRLF.CRLF, unstuffed; (None, size) when over the limit.

        Scanned input moves out of `buf` into `body` (all but the last four bytes, which
        may begin the end marker), so `buf` holds only unread input and reading pauses
        and resumes on that alone. `body` stops growing once it is surely over the limit
        (dot-stuffing adds at most one byte per three), so memory stays bounded by it.
        """
        limit = self.cfg.max_message_size
        cap = limit + limit // 3 + 8  # stuffed bytes a message of `limit` bytes may take
        body = bytearray()
        moved = 0  # stuffed bytes moved out of buf, kept or not
        while True:
            buf = self.buf
            if not moved and buf.startswith(b".\r\n"):  # the buffer starts the data
                del buf[:3]
                return b"", 0
            end = buf.find(b"\r\n.\r\n")
            if end >= 0:
                size = moved + end + 2
                if size > cap:
                    del buf[: end + 5]
                    return None, size
                # through a memoryview: a bytearray slice is a copy of its own (and a
                # second 100 KB allocation, which glibc gives back and faults in again)
                if moved:
                    body += memoryview(buf)[: end + 2]
                    stuffed = bytes(body)
                else:
                    stuffed = bytes(memoryview(buf)[: end + 2])  # one buffer, one copy
                del buf[: end + 5]
                data = unstuff(stuffed)
                return (data if len(data) <= limit else None), size
            if len(buf) > 4:
                n = len(buf) - 4
                if moved + n <= cap:
                    body += memoryview(buf)[:n]  # released here, before the del below
                else:
                    body.clear()  # surely over the limit: count the rest, keep nothing
                moved += n
                del buf[:n]
            await self._wait_more()

    # -- the session ----------------------------------------------------------------
    async def _run(self) -> None:
        relay = self.relay
        counted = False
        try:
            if relay.lifecycle.draining:
                self.close_with(
                    Reply(421, "4.3.2", "Service shutting down, try later"), enhanced=True
                )
            # counted over all of the server's processes (shared.py)
            if not relay.connections.acquire(ALL_CLIENTS, self.cfg.max_connections):
                self.close_with(
                    Reply(421, "4.3.2", "Too many connections, try later"), enhanced=True
                )
            counted = True  # (the total: the address is counted next)
            if not relay.connections.acquire(self.client_ip, self.cfg.max_connections_per_ip):
                relay.connections.release(ALL_CLIENTS)
                counted = False
                self.close_with(
                    Reply(421, "4.3.2", "Too many connections from your address"),
                    enhanced=True,
                )
            self.raw_reply(f"220 {relay.hostname} ESMTP mailgate")
            self.deadline = time.monotonic() + self.cfg.session_timeout
            while True:
                line = await self.read_line()
                await self._command(line)
                await self._backpressure()
        except SessionClosed:
            pass
        except Exception:  # never leak internals; log and end politely
            log.exception("smtp session from %s failed", self.client_ip)
            try:
                self.close_with(Reply(421, "4.3.0", "Internal error, closing connection"))
            except SessionClosed:
                pass
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            if counted:
                try:
                    relay.connections.release(self.client_ip)
                finally:
                    relay.connections.release(ALL_CLIENTS)
            if self.transport is not None and not self.transport.is_closing():
                self.flush()
                self.transport.close()

    async def _command(self, line: bytes | None) -> None:
        if line is None:
            self._bad(Reply(500, "5.5.2", "Line too long"))
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._bad(Reply(500, "5.5.2", "Command is not valid UTF-8"))
            return
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb in SYNC_VERBS and self.buf and verb != "QUIT":
            self.close_with(Reply(554, "5.5.0", "Improper command pipelining"))
        handler: Callable[[str], Awaitable[None] | None] | None = getattr(
            self, f"smtp_{verb}", None
        )
        if handler is None or "\x00" in text:
            self._bad(Reply(500, "5.5.2", "Command not recognized"))
            return
        result = handler(arg.strip())
        if result is not None:  # the verbs that wait are coroutines
            await result

    def _bad(self, r: Reply) -> None:
        self.bad_commands += 1
        if self.bad_commands > self.cfg.max_unknown_commands:
            self.close_with(Reply(421, "4.7.0", "Too many errors, closing connection"))
        self.reply(r)

    # -- verbs (RFC spelling) ------------------------------------------------------------
    def _trusted_ip(self) -> bool:
        """Whether the client's address may relay without AUTH; asked once a session."""
        if self.trusted is None:
            self.trusted = self.relay.is_trusted(self.client_ip)
        return self.trusted

    def _ehlo_lines(self) -> list[str]:
        lines = [
            self.relay.hostname,
            f"SIZE {self.cfg.max_message_size}",
            "PIPELINING",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if self.relay.tls_context is not None and not self.tls:
            lines.append("STARTTLS")
        if self._auth_offered() and self.key is None:
            lines.append("AUTH PLAIN LOGIN")
        return lines

    def _auth_offered(self) -> bool:
        return self.tls or self.cfg.allow_plaintext_auth or self.relay.is_loopback(self.client_ip)

    def smtp_EHLO(self, arg: str) -> None:
        if not arg:
            self.reply(Reply(501, "5.5.4", "Syntax: EHLO hostname"))
            return
        self.esmtp = True
        self.helo = arg.split()[0][:255]
        self._reset()
        lines = self._ehlo_lines()
        for line in lines[:-1]:
            self.raw_reply(f"250-{line}")
        self.raw_reply(f"250 {lines[-1]}")

    def smtp_HELO(self, arg: str) -> None:
        if not arg:
            self.reply(Reply(501, "5.5.4", "Syntax: HELO hostname"))
            return
        self.esmtp = False
        self.helo = arg.split()[0][:255]
        self._reset()
        self.raw_reply(f"250 {self.relay.hostname}")

    async def smtp_STARTTLS(self, arg: str) -> None:
        ctx = self.relay.tls_context
        if ctx is None or self.tls:
            self.reply(
                Reply(
                    503 if self.tls else 454,
                    "5.5.1" if self.tls else "4.7.0",
                    "TLS already active" if self.tls else "TLS not available",
                )
            )
            return
        if arg:
            self.reply(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        self.reply(Reply(220, "2.0.0", "Ready to start TLS"))
        self.flush()
        self.buf.clear()  # RFC 3207: nothing sent before the handshake may be used after it
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        # Awaited directly (no wait_for task), so reading pauses before any more bytes
        # can land in the buffer; decrypted data after the handshake is kept.
        try:
            new = await loop.start_tls(
                self.transport,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.cfg.idle_timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError):
            raise SessionClosed from None
        if new is None:
            raise SessionClosed
        self.transport = new
        self.tls = True
        self.helo = None
        self.esmtp = False
        self._reset()

    async def smtp_AUTH(self, arg: str) -> None:
        if self.key is not None:
            self.reply(Reply(503, "5.5.1", "Already authenticated"))
            return
        if self.helo is None:
            self.reply(Reply(503, "5.5.1", "Send EHLO first"))
            return
        if self.mail_from is not None:
            self.reply(Reply(503, "5.5.1", "AUTH not allowed during a mail transaction"))
            return
        if not self._auth_offered():
            self.reply(Reply(530, "5.7.0", "Must issue a STARTTLS command first"))
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        secret: str | None
        if mechanism == "PLAIN":
            response = initial.strip() or await self._challenge("")
            if response is None:
                return
            decoded = self._b64(response)
            if decoded is None:
                return
            parts = decoded.split("\x00")
            if len(parts) != 3:
                self.reply(Reply(501, "5.5.2", "Malformed PLAIN response"))
                return
            secret = parts[2]
        elif mechanism == "LOGIN":
            if initial.strip():
                user = self._b64(initial.strip())
            else:
                got = await self._challenge("VXNlcm5hbWU6")
                user = self._b64(got) if got is not None else None
            if user is None:
                return
            got = await self._challenge("UGFzc3dvcmQ6")
            secret = self._b64(got) if got is not None else None
            if secret is None:
                return
        else:
            self.reply(Reply(504, "5.5.4", "Unrecognized authentication mechanism"))
            return
        await self._check_secret(secret)

    async def _challenge(self, prompt: str) -> str | None:
        self.raw_reply(f"334 {prompt}")
        line = await self.read_line()
        if line is None:
            self.reply(Reply(500, "5.5.2", "Line too long"))
            return None
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            self.reply(Reply(501, "5.0.0", "Authentication cancelled"))
            return None
        return text

    def _b64(self, text: str) -> str | None:
        try:
            return base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            self.reply(Reply(501, "5.5.2", "Cannot decode base64 response"))
            return None

    async def _check_secret(self, secret: str) -> None:
        guard = self.relay.guard
        if guard.ip_locked(self.client_ip):
            self.close_with(Reply(421, "4.7.0", "Too many failed logins, try later"))
        key_id = keys.key_id_of(secret)
        key = await keys.authenticate(self.relay.store, secret)
        if key is not None and key.has(Scope.SEND) and not guard.key_locked(key_id, self.client_ip):
            self.key = key
            self.reply(Reply(235, "2.7.0", "Authentication successful"))
            return
        self.auth_failures += 1
        # Same reply and a growing delay for unknown, wrong, locked and under-scoped keys.
        await asyncio.sleep(guard.failed(self.client_ip, key_id))
        if self.auth_failures >= self.cfg.max_auth_failures:
            self.close_with(Reply(421, "4.7.0", "Too many failed logins, closing"))
        self.reply(Reply(535, "5.7.8", "Authentication credentials invalid"))

    def smtp_MAIL(self, arg: str) -> None:
        if self.relay.lifecycle.draining:  # no new transactions
            self.close_with(Reply(421, "4.3.2", "Service shutting down, try later"))
        if self.helo is None:
            self.reply(Reply(503, "5.5.1", "Send HELO or EHLO first"))
            return
        if self.mail_from is not None:
            self.reply(Reply(503, "5.5.1", "Nested MAIL command"))
            return
        path = parse_path(arg, "FROM")
        if isinstance(path, Reply):
            self.reply(path)
            return
        problem = param_problem(path.params, MAIL_PARAMS) or self._mail_params_problem(path.params)
        if problem is not None:
            self.reply(problem)
            return
        smtputf8 = "SMTPUTF8" in path.params
        if not smtputf8 and not path.address.isascii():
            self.reply(Reply(553, "5.6.7", "Address requires SMTPUTF8"))
            return
        refusal = authorise_sender(self.key, path.address)  # the door's rule, asked early
        if refusal is not None:
            self.reply(smtp_reply(refusal))
            return
        self.mail_from = path.address
        self.smtputf8 = smtputf8
        self.reply(Reply(250, "2.1.0", "Ok"))

    def _mail_params_problem(self, params: dict[str, str | None]) -> Reply | None:
        if "SIZE" in params:
            size = params["SIZE"] or ""
            if not size.isdigit():
                return Reply(501, "5.5.4", "Bad SIZE parameter")
            if int(size) > self.cfg.max_message_size:
                return Reply(552, "5.3.4", "Message size exceeds fixed limit")
        if "BODY" in params and (params["BODY"] or "").upper() not in ("7BIT", "8BITMIME"):
            return Reply(501, "5.5.4", "Bad BODY parameter")
        if params.get("SMTPUTF8") is not None:
            return Reply(501, "5.5.4", "SMTPUTF8 takes no value")
        if "AUTH" in params and not params["AUTH"]:
            return Reply(501, "5.5.4", "Bad AUTH parameter")
        return None

    def smtp_RCPT(self, arg: str) -> None:
        if self.mail_from is None:
            self.reply(Reply(503, "5.5.1", "Need MAIL command"))
            return
        path = parse_path(arg, "TO")
        if isinstance(path, Reply):
            self.reply(path)
            return
        problem = param_problem(path.params, RCPT_PARAMS)
        if problem is not None:
            self.reply(problem)
            return
        if not self.smtputf8 and not path.address.isascii():
            self.reply(Reply(553, "5.6.7", "Address requires SMTPUTF8"))
            return
        if self.key is None and not self._trusted_ip():
            self.reply(Reply(554, "5.7.1", "Relay access denied: authenticate first"))
            return
        key = mailbox_key(path.address)
        if key in self.rcpt_keys:  # the same mailbox twice: one copy, as Postfix does
            self.reply(Reply(250, "2.1.5", "Ok"))
            return
        if len(self.rcpts) >= self.relay.door.max_recipients:  # the door's cap, asked early
            self.reply(Reply(452, "4.5.3", "Too many recipients"))
            return
        self.rcpt_keys.add(key)
        self.rcpts.append(path.address)
        self.reply(Reply(250, "2.1.5", "Ok"))

    async def smtp_DATA(self, arg: str) -> None:
        if self.mail_from is None:
            self.reply(Reply(503, "5.5.1", "Need MAIL command"))
            return
        if not self.rcpts:
            self.reply(Reply(503, "5.5.1", "Need RCPT command"))
            return
        if arg:
            self.reply(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        self.raw_reply("354 End data with <CR><LF>.<CR><LF>")
        self.flush()
        data, size = await self.read_data()
        result = await self._finish(data, size)
        self._reset()
        self.reply(result)

    async def _finish(self, data: bytes | None, size: int) -> Reply:
        if data is None:
            return Reply(552, "5.3.4", "Message size exceeds fixed limit")
        problem = data_problem(data)
        if problem is not None:
            return problem
        sender = self.mail_from or ""
        recipients = tuple(self.rcpts)
        protocol = (
            ("ESMTP" if self.esmtp else "SMTP")
            + ("S" if self.tls else "")
            + ("A" if self.key else "")
        )
        facts = header_facts(data)
        idem = None
        # A re-send is folded into the first copy only when it is the same transaction:
        # same sender, the exact same recipients, the same bytes. That catches the one
        # duplicate SMTP makes by itself (our 250 lost after the commit, the client sends
        # again) and nothing else. Message-ID alone is not enough: a client re-sends one
        # message to the recipients our 452 refused (RFC 5321 4.5.3.1.10), and apps send
        # per-recipient copies under one Message-ID; a 250 must never stand for
        # recipients that were not stored. Mail without a Message-ID is never folded:
        # two alerts with the same text are two messages.
        if facts.message_id and self.cfg.dedupe_window > 0:
            idem = IdempotencyRequest(
                "smtp-transaction:" + transaction_key(sender, recipients, data),
                "",
                self.cfg.dedupe_window,
            )
        submission = Submission(
            sender=sender,
            recipients=recipients,
            content=data,
            source=Source.SMTP,
            client=Client(self.client_ip, protocol, self.helo or ""),
            key=self.key,
            idempotency=idem,
            facts=facts,
        )
        try:
            answer = await self.relay.door.accept(submission)
        except Exception:
            log.exception("smtp: accept failed")
            return Reply(451, "4.3.0", "Temporary failure, try again later")
        return smtp_reply(answer)

    def smtp_RSET(self, arg: str) -> None:
        self._reset()
        self.reply(Reply(250, "2.0.0", "Ok"))

    def smtp_NOOP(self, arg: str) -> None:
        self.reply(Reply(250, "2.0.0", "Ok"))

    def smtp_VRFY(self, arg: str) -> None:
        self.reply(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message"))

    def smtp_HELP(self, arg: str) -> None:
        self.reply(Reply(214, "2.0.0", "See RFC 5321"))

    def smtp_QUIT(self, arg: str) -> None:
        self.close_with(Reply(221, "2.0.0", "Bye"))


# How the door's refusals read over SMTP: (code, enhanced status) per rule.
_REFUSED = {
    Rule.SENDER: (553, "5.7.1"),
    Rule.DOMAIN: (550, "5.7.1"),
    Rule.RECIPIENTS: (452, "4.5.3"),
    Rule.UNAVAILABLE: (451, "4.3.0"),
}


def smtp_reply(answer: Accepted | Refusal) -> Reply:
    """The door's answer as an SMTP reply; the refusal's reason is the text."""
    if isinstance(answer, Accepted):
        text = f"Ok: queued as {answer.message_id}"
        if answer.suppressed:  # recorded with an event each, but never sent
            n = answer.suppressed
            text += f" ({n} recipient{'s' if n > 1 else ''} suppressed, not sent)"
        return Reply(250, "2.0.0", text)
    code, enhanced = _REFUSED[answer.rule]
    return Reply(code, enhanced, answer.reason)


class SmtpRelay:
    """Listening sockets, shared limits and the policy inputs of every session."""

    def __init__(
        self,
        cfg: SmtpConfig,
        store: Store,
        hostname: str,
        door: Door,
        *,
        tls_context: ssl.SSLContext | None = None,
        guard: AuthGuard | None = None,
        lifecycle: Lifecycle | None = None,
        reuse_port: bool = False,
        shared: Path | None = None,  # the server's shared limits (shared.py), if any
    ) -> None:
        self.cfg = cfg
        self.guard = guard or AuthGuard()
        self.door = door
        self.lifecycle = lifecycle or Lifecycle(Phase.READY)
        self.reuse_port = reuse_port
        self.store = store
        self.hostname = hostname
        self.tls_context = tls_context
        self.connections = SharedCounts(shared / "smtp-connections.shm" if shared else None)
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.Server] = []
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in cfg.trusted_networks]

    def is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._trusted)

    @staticmethod
    def is_loopback(ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return addr.ipv4_mapped.is_loopback
        return addr.is_loopback

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Session(self),
            self.cfg.host,
            self.cfg.port,
            reuse_port=self.reuse_port or None,
            backlog=1024,
        )
        self.servers.append(server)
        if self.cfg.tls_port and self.tls_context is not None:
            tls_server = await loop.create_server(
                lambda: Session(self, implicit_tls=True),
                self.cfg.host,
                self.cfg.tls_port,
                ssl=self.tls_context,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
            self.servers.append(tls_server)

    @property
    def port(self) -> int:
        sock = self.servers[0].sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; let transactions in flight finish; then close the rest."""
        self.lifecycle.drain()  # new connections and transactions now get 421 4.3.2
        deadline = time.monotonic() + grace
        while any(s.mail_from is not None for s in self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for s in list(self.sessions):
            if s.transport is not None and not s.transport.is_closing():
                s.raw_reply("421 4.3.2 Service shutting down")
                s.flush()
                s.transport.close()
        tasks = [s.task for s in self.sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
