"""A real SMTP submission server for the mailbox send tests: aiosmtpd on loopback with
STARTTLS (a certificate from the Dovecot's test CA) required before AUTH, AUTH PLAIN /
LOGIN checked against the Dovecot's users, and every accepted message delivered to the
INBOX of each recipient that is a Dovecot user (APPEND, as a real MTA's local delivery
would put it there), so the other party of a conversation reads it from its mailbox."""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.mailboxes.dovecot import Dovecot, free_port


@dataclass
class Submitted:
    login: str
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class SubmissionPeer:
    dovecot: Dovecot
    port: int
    received: list[Submitted] = field(default_factory=list)
    refused_logins: int = 0
    locked: set[str] = field(default_factory=set)  # users whose logins it refuses now
    tokens: dict[str, str] = field(default_factory=dict)  # user -> OAuth2 token (XOAUTH2)

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        if user not in self.locked and self.dovecot.users.get(user) == password:
            return AuthResult(success=True, auth_data=user)
        self.refused_logins += 1
        return AuthResult(success=False, handled=False)

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        """RFC-less but universal (Gmail, Microsoft 365): base64 of
        "user=<u>^Aauth=Bearer <token>^A^A" as the initial response."""
        if len(args) < 2:
            return AuthResult(success=False, handled=False)
        fields = base64.b64decode(args[1]).decode().split("\x01")
        user = fields[0].removeprefix("user=")
        token = next((f.removeprefix("auth=Bearer ") for f in fields if f.startswith("auth=")), "")
        if self.tokens.get(user) == token and user not in self.locked:
            return AuthResult(success=True, auth_data=user)
        self.refused_logins += 1
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        self.received.append(
            Submitted(
                str(session.auth_data), envelope.mail_from, list(envelope.rcpt_tos), bytes(data)
            )
        )
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.dovecot.users:
                await asyncio.to_thread(self.dovecot.append, rcpt, bytes(data))
        return "250 2.0.0 Ok: queued"


def start_submission(dovecot: Dovecot, tmp: Path) -> tuple[SubmissionPeer, Controller]:
    cert = dovecot.ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    peer = SubmissionPeer(dovecot, free_port())
    controller = Controller(
        peer,
        hostname="127.0.0.1",
        port=peer.port,
        server_hostname="submission.test",
        tls_context=ctx,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=peer.authenticate,
    )
    controller.start()
    return peer, controller
