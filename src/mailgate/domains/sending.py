"""The sending domains one process signs for, kept in memory: the door asks it for each
message (no store read per message) and it reloads from the store every
`domains.refresh_seconds`, and at once after a change made in this process.

Signing happens in the door's last step, in the ingress process, before the commit: the
stored bytes are the signed bytes, so every delivery attempt sends the same signature
and nothing after the door may change them. (At delivery, a retry would sign again and a
crash between signing and sending could not be told apart; the cost is the same.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mailgate.addresses import ascii_domain
from mailgate.domains import dkim
from mailgate.domains.keys import open_signer
from mailgate.domains.records import signing_keys
from mailgate.models import domain_of
from mailgate.secretbox import SecretBox
from mailgate.store import Store

log = logging.getLogger("mailgate.domains")


def candidates(domain: str) -> list[str]:
    """The domain and each parent, in A-labels as domains are stored: mail From
    a.b.example.org is signed by the first of a.b.example.org, b.example.org,
    example.org that is a sending domain."""
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        try:
            domain = ascii_domain(domain)
        except ValueError:  # not a domain IDNA can spell: no sending domain has it
            return []
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)] or [domain.lower()]


class SendingDomains:
    def __init__(
        self, store: Store, box: SecretBox, refresh_seconds: float, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.box = box
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._signers: dict[str, tuple[dkim.Signer, ...]] = {}  # sending domain -> keys
        self._opened: dict[str, dkim.Signer] = {}  # domain/selector -> opened key (kept)
        self._task: asyncio.Task[None] | None = None

    def find(self, from_domain: str) -> tuple[dkim.Signer, ...] | None:
        """The keys that sign mail From this domain; None when neither it nor a parent
        is a sending domain."""
        signers = self._signers
        for name in candidates(from_domain):
            found = signers.get(name)
            if found is not None:
                return found
        return None

    def is_sending(self, address: str) -> bool:
        return self.find(domain_of(address)) is not None

    def signers_for(self, address: str | None) -> tuple[dkim.Signer, ...] | None:
        local, at, domain = (address or "").rpartition("@")
        if not (local and at and self._signers):  # no From, or none that is an address
            return None
        return self.find(domain)

    def sign(self, raw: bytes, from_address: str | None) -> bytes:
        """raw signed by the sending domain of its From address, or as it is."""
        signers = self.signers_for(from_address)
        if signers is None:
            return raw
        return dkim.sign(raw, signers, int(self.clock()))

    async def refresh(self) -> None:
        domains, sealed = await self.store.sending_keys()
        fresh: dict[str, tuple[dkim.Signer, ...]] = {}
        opened: dict[str, dkim.Signer] = {}
        for domain in domains:
            keys = []
            for key in signing_keys(domain):
                ref = f"{key.domain}/{key.selector}"
                try:
                    signer = self._opened.get(ref) or open_signer(key, sealed[ref], self.box)
                except Exception as e:  # one key that cannot be opened stops only itself
                    log.error("DKIM key %s of %s cannot be opened: %s", key.selector, key.domain, e)
                    continue
                opened[ref] = signer
                keys.append(signer)
            if keys:
                fresh[domain.name] = tuple(keys)
        self._signers, self._opened = fresh, opened

    async def start(self) -> None:
        """Load before the doors open (the first message is signed), then keep reloading."""
        await self.refresh()
        self._task = asyncio.create_task(self._reload())

    async def stop(self, grace: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _reload(self) -> None:
        """Reload for as long as the process runs; a failed reload keeps what it had."""
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("reloading the sending domains failed; signing as before")
