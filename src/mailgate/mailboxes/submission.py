"""Sending from a connected mailbox: its mail goes to the mailbox's own SMTP submission
server, logged in with the mailbox's credentials, then is filed in its Sent folder.

    check(grant, creds)         on create / re-authenticate: connect, TLS, AUTH, QUIT;
                                None, or one sentence naming the cause
    GrantRoutes.destination     the delivery worker's target for route "(grant:<id>)"
    GrantRoutes.delivered       after the delivery is recorded: APPEND to Sent

The session is delivery's own (delivery/smtp_client.py: pipelining, replies in step,
STARTTLS) with the grant's server as its smarthost and a login of its own (AUTH PLAIN or
LOGIN with a password, XOAUTH2 with a token). The server's addresses must be globally
reachable unless mailboxes.allow_private_networks allows them (reachable.py).

A refused login is not the message's fault: it is deferred (it waits for the grant to be
re-authenticated, and expires with delivery.lifetime as any deferred mail), and the
grant is marked invalid with the server's words.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from mailgate.config import DeliveryConfig, MailboxesConfig
from mailgate.delivery.mx import Target
from mailgate.delivery.outcome import Outcome, Step, permanent, temporary
from mailgate.delivery.smtp_client import Connection, Session
from mailgate.delivery.worker import Destination
from mailgate.mailboxes.grants import unseal
from mailgate.mailboxes.models import (
    AuthMethod,
    Credentials,
    FolderRole,
    Grant,
    GrantStatus,
    Server,
    TlsMode,
)
from mailgate.models import Message, RecipientStatus
from mailgate.reachable import Network, forbidden
from mailgate.secretbox import SecretBox
from mailgate.store import Store

log = logging.getLogger("mailgate.mailboxes")
CHECK_TIMEOUT = 15.0  # seconds for each step of a check made while an API call waits
SEEN = ("\\Seen",)


class Filer(Protocol):
    """What files a copy in a mailbox folder (mailboxes/service.py's Mailboxes)."""

    async def append(
        self, grant: Grant, role: FolderRole, raw: bytes, flags: tuple[str, ...] = ()
    ) -> object: ...


class GrantSession(Session):
    """A delivery session whose login is the grant's. Without TLS (TlsMode.NONE, for
    tests on loopback) the credentials go in the clear, as the grant was made to."""

    def __init__(
        self,
        target: Target,
        port: int,
        cfg: DeliveryConfig,
        ehlo: str,
        username: str,
        creds: Credentials,
        on_close: Callable[[], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(target, port, cfg, ehlo, on_close)
        self.username, self.creds, self.on_refused = username, creds, on_refused

    async def _login(self, conn: Connection) -> Outcome | None:
        cfg, host = self.cfg, self.target.host
        if not self.tls and cfg.smarthost_tls != "none":
            await self.close()
            return temporary(f"{host} offered no TLS: credentials not sent", host, "4.7.5")
        mechanisms = conn.extensions.get("AUTH", "").upper().split()
        if self.creds.auth is AuthMethod.XOAUTH2:
            token = f"user={self.username}\x01auth=Bearer {self.creds.secret}\x01\x01"
            line = b"AUTH XOAUTH2 " + base64.b64encode(token.encode())
            reply = await conn.command(line, cfg.command_timeout)
            if reply.code == 334:  # the server's JSON error; an empty line ends the exchange
                reply = await conn.command(b"", cfg.command_timeout)
        elif "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            plain = f"\0{self.username}\0{self.creds.secret}".encode()
            reply = await conn.command(
                b"AUTH PLAIN " + base64.b64encode(plain), cfg.command_timeout
            )
        else:
            reply = await conn.command(b"AUTH LOGIN", cfg.command_timeout)
            for answer in (self.username, self.creds.secret):
                if reply.code != 334:
                    break
                reply = await conn.command(base64.b64encode(answer.encode()), cfg.command_timeout)
        if Step.AUTH.accepts(reply.code):
            return None
        await self.close()
        said = f"{host} refused the mailbox's credentials: {reply.code} {reply.text}".strip()
        if self.on_refused is not None:
            self.on_refused(said)
        return temporary(said, host, "4.7.8")


def session_config(
    delivery: DeliveryConfig, mailboxes: MailboxesConfig, smtp: Server
) -> DeliveryConfig:
    """delivery's settings with the grant's server as the smarthost, its TLS mode, and
    certificates verified (a submission server has a real name and certificate)."""
    return delivery.model_copy(
        update={
            "smarthost": f"{smtp.host}:{smtp.port}",
            "smarthost_tls": smtp.tls.value,
            "tls": "none" if smtp.tls is TlsMode.NONE else "required",
            "verify_certificates": True,
            "tls_ca_file": mailboxes.tls_ca_file or delivery.tls_ca_file,
        }
    )


async def addresses(host: str, port: int, allowed: list[Network]) -> list[str] | str:
    """The server's addresses mailgate may connect to, or why there are none."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"{host} cannot be resolved: {exc}"
    usable = list(
        dict.fromkeys(
            str(info[4][0])
            for info in found
            if not forbidden(ipaddress.ip_address(str(info[4][0]).split("%")[0]), allowed)
        )
    )
    if not usable:
        return (
            f"{host} resolves only to addresses that are not public; set"
            " mailboxes.allow_private_networks to allow them"
        )
    return usable


class GrantRoutes:
    """Delivery's view of grants (delivery/worker.py MailboxRoutes)."""

    def __init__(
        self,
        store: Store,
        box: SecretBox,
        delivery: DeliveryConfig,
        mailboxes: MailboxesConfig,
        ehlo: str,
        filer: Filer | None,
    ) -> None:
        self.store, self.box, self.delivery, self.cfg = store, box, delivery, mailboxes
        self.ehlo, self.filer = ehlo, filer
        self.allowed = [ipaddress.ip_network(n) for n in mailboxes.allow_private_networks]
        self._marking: set[asyncio.Task[bool]] = set()

    async def destination(self, grant_id: str) -> Destination | Outcome:
        grant = await self.store.get_grant(grant_id)
        sealed = await self.store.grant_credentials(grant_id)
        if grant is None or sealed is None:
            return permanent("The mailbox it was sent from was disconnected", "5.1.0", 550)
        found = await addresses(grant.smtp.host, grant.smtp.port, self.allowed)
        if isinstance(found, str):
            return temporary(found, grant.smtp.host, "4.4.3")
        creds = unseal(self.box, sealed)
        cfg = session_config(self.delivery, self.cfg, grant.smtp)

        def refused(reason: str) -> None:
            task = asyncio.ensure_future(
                self.store.set_grant_status(grant_id, GrantStatus.INVALID, reason)
            )
            self._marking.add(task)
            task.add_done_callback(self._marking.discard)

        def open_session(target: Target, port: int, on_close: Callable[[], None]) -> Session:
            return GrantSession(
                target, port, cfg, self.ehlo, grant.username, creds, on_close, refused
            )

        targets = [Target(grant.smtp.host, a, 0, grant.smtp.port) for a in found]
        return Destination(targets, open_session)

    async def delivered(self, grant_id: str, sent: list[tuple[Message, bytes, int]]) -> None:
        if self.filer is None:
            return
        try:
            grant = await self.store.get_grant(grant_id)
            if grant is None or grant.server_files_sent:
                return
            for message, raw, now_delivered in sent:
                recipients = await self.store.recipients(message.id)
                ever = sum(r.status is RecipientStatus.DELIVERED for r in recipients)
                if ever > now_delivered:  # delivered to someone before: filed then
                    continue
                await self.filer.append(grant, FolderRole.SENT, raw, SEEN)
        except Exception:  # the mail is delivered; a missing Sent copy is logged, not retried
            log.exception("mailboxes: could not file sent mail in grant %s's Sent", grant_id)


async def check(
    grant: Grant,
    creds: Credentials,
    delivery: DeliveryConfig,
    mailboxes: MailboxesConfig,
    ehlo: str,
) -> str | None:
    """Log in to the grant's submission server and QUIT: None, or why it failed (the
    server unreachable, TLS, the credentials refused), in one sentence."""
    allowed = [ipaddress.ip_network(n) for n in mailboxes.allow_private_networks]
    found = await addresses(grant.smtp.host, grant.smtp.port, allowed)
    if isinstance(found, str):
        return f"SMTP: {found}"
    cfg = session_config(delivery, mailboxes, grant.smtp).model_copy(
        update={"connect_timeout": CHECK_TIMEOUT, "command_timeout": CHECK_TIMEOUT}
    )
    problem = "no address"
    for address in found:
        target = Target(grant.smtp.host, address, 0, grant.smtp.port)
        session = GrantSession(target, grant.smtp.port, cfg, ehlo, grant.username, creds)
        outcome = await session.open()
        if outcome is None:
            await session.close()
            return None
        await session.close()
        problem = outcome.reply.text if outcome.reply is not None else "failed"
        if "SSL" in problem or "certificate" in problem.lower():
            problem = f"TLS failed: {problem}"
        if "credentials" in problem:
            break  # the server answered: another address would say the same
    return f"SMTP {grant.smtp.host}:{grant.smtp.port}: {problem}"
