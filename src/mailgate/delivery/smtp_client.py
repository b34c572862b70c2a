"""Speak SMTP to one destination host with aiosmtplib and turn every reply and error
into per-recipient Outcomes. Connection-level trouble comes back as one Outcome so the
caller can try the next MX."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from mailgate.config import DeliveryConfig
from mailgate.delivery.mx import Target
from mailgate.delivery.outcome import Outcome, from_reply, temporary


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str
    recipients: tuple[str, ...]
    raw: bytes


def tls_context(cfg: DeliveryConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
    if not cfg.verify_certificates:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


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
        self.smtp: aiosmtplib.SMTP | None = None
        self.tls = False
        self._on_close = on_close  # frees the per-host connection slot exactly once

    async def open(self, allow_tls: bool = True) -> Outcome | None:
        """Connect, EHLO and STARTTLS per policy; None when ready, else why not."""
        cfg, host = self.cfg, self.target.host
        implicit = bool(cfg.smarthost) and cfg.smarthost_tls == "implicit"
        smtp = aiosmtplib.SMTP(
            hostname=self.target.address,
            port=self.port,
            local_hostname=self.ehlo,
            timeout=cfg.command_timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=tls_context(cfg) if implicit else None,
        )
        try:
            await smtp.connect(timeout=cfg.connect_timeout)
            await smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            await _quit(smtp)
            return from_reply(exc.code, exc.message, host)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await _quit(smtp)
            return temporary(f"connect to {host}[{self.target.address}] failed: {exc}", host)
        self.smtp = smtp
        wants_tls = cfg.tls != "none" and allow_tls and not implicit
        required = cfg.tls == "required" or (
            bool(cfg.smarthost) and cfg.smarthost_tls == "starttls"
        )
        if wants_tls and smtp.supports_extension("starttls"):
            try:
                await smtp.starttls(tls_context=tls_context(cfg), server_hostname=host)
                await smtp.ehlo()  # RFC 3207: the session starts over after STARTTLS
                self.tls = True
            except (aiosmtplib.SMTPException, ssl.SSLError, OSError, TimeoutError) as exc:
                await _quit(smtp)  # keeps the host slot for the plaintext retry
                self.smtp = None
                if not required:
                    # Opportunistic TLS falls back to plaintext on a failed handshake, as
                    # Postfix does at security level "may"; "required" defers instead.
                    return await self.open(allow_tls=False)
                return temporary(f"TLS with {host} failed: {exc}", host, enhanced="4.7.5")
        elif required:
            await self.close()
            return temporary(
                f"{host} does not offer STARTTLS, which is required", host, enhanced="4.7.5"
            )
        self.tls = self.tls or implicit
        if cfg.smarthost and cfg.smarthost_username:
            if not self.tls:
                await self.close()
                return temporary(
                    "refusing to AUTH to the smarthost without TLS", host, enhanced="4.7.5"
                )
            try:
                await smtp.login(cfg.smarthost_username, cfg.smarthost_password)
            except aiosmtplib.SMTPResponseException as exc:
                await self.close()
                return from_reply(exc.code, exc.message, host)
        return None

    async def send(self, tx: Transaction) -> dict[str, Outcome] | Outcome:
        """Per-recipient outcomes, or one Outcome when the connection itself failed."""
        smtp = self.smtp
        assert smtp is not None
        host = self.target.host
        results: dict[str, Outcome] = {}
        try:
            # MAIL and RCPT go out as raw commands: the addresses were validated when the
            # message was accepted, and aiosmtplib's re-parsing cost a fifth of delivery time.
            options = [f"SIZE={len(tx.raw)}".encode()] if smtp.supports_extension("size") else []
            if not tx.sender.isascii() and smtp.supports_extension("smtputf8"):
                options.append(b"SMTPUTF8")
            response = await smtp.execute_command(
                b"MAIL", b"FROM:<" + tx.sender.encode() + b">", *options
            )
            if response.code != 250:
                outcome = from_reply(response.code, response.message, host)
                await _rset(smtp)
                return dict.fromkeys(tx.recipients, outcome)
            accepted: list[str] = []
            for rcpt in tx.recipients:
                response = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode() + b">")
                if response.code in (250, 251):
                    accepted.append(rcpt)
                else:
                    results[rcpt] = from_reply(response.code, response.message, host)
            if not accepted:
                await _rset(smtp)
                return results
            try:
                response = await smtp.data(tx.raw, timeout=self.cfg.data_timeout)
                outcome = from_reply(response.code, response.message, host)
            except aiosmtplib.SMTPResponseException as exc:
                outcome = from_reply(exc.code, exc.message, host)
            for rcpt in accepted:
                results[rcpt] = outcome
            return results
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            # The remote may have taken the message before the connection broke (a stall
            # after the dot): retrying may duplicate, never lose.
            return temporary(f"connection to {host} lost: {exc}", host)

    async def close(self) -> None:
        if self.smtp is not None:
            await _quit(self.smtp)
            self.smtp = None
        release = self._on_close
        if release is not None:
            self._on_close = None
            release()


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        if smtp.is_connected:
            await smtp.quit(timeout=5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()


async def _rset(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.rset()
    except aiosmtplib.SMTPException:
        pass
