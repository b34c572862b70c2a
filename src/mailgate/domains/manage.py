"""Sending domains as a resource: add (with new keys), verify, rotate, retire, remove,
and the scheduled re-checks. The HTTP routes (http/domains.py), the CLI and the
delivery process's checker all call these."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import dns.asyncresolver

from mailgate.addresses import ascii_domain, domain_problem
from mailgate.config import Config
from mailgate.domains import records, verify
from mailgate.domains.keys import new_keys
from mailgate.errors import RequestError
from mailgate.models import Domain
from mailgate.secretbox import SecretBox
from mailgate.store import Store

log = logging.getLogger("mailgate.domains")
CHECK_LOOP_SECONDS = 30.0  # how often the checker looks for domains due a check


def policy_of(config: Config) -> records.Policy:
    d = config.domains
    return records.Policy(
        config.server.hostname,
        tuple(d.spf_ip),
        d.spf_include,
        d.dmarc_report_address,
        d.return_path,
    )


class DomainChecks:
    """The scheduled re-checks as a component (run where delivery runs)."""

    def __init__(self, admin: DomainAdmin) -> None:
        self.admin = admin
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.admin.run_checks(self.stopping))

    async def stop(self, grace: float) -> None:
        self.stopping.set()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def domain_name(text: str) -> str:
    """The domain as stored: lower-case A-labels, no final dot; RequestError otherwise."""
    name = text.strip().rstrip(".").lower()
    problem = domain_problem(name) if name else "is empty"
    if problem is None and (name.startswith("[") or "." not in name):
        problem = "must be a domain name with at least two labels"
    if problem is not None:
        raise RequestError("invalid_field", f"Domain {text!r} {problem}", "name")
    return ascii_domain(name)


class DomainAdmin:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        policy: records.Policy,
        resolver: dns.asyncresolver.Resolver,
        intervals: tuple[float, float] = (3600.0, 300.0),  # (sending, not yet verified)
        on_change: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.box, self.policy, self.resolver = store, box, policy, resolver
        self.intervals, self.on_change, self.clock = intervals, on_change, clock

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    async def get(self, name: str) -> Domain:
        domain = await self.store.get_domain(domain_name(name))
        if domain is None:
            raise RequestError("not_found", f"No domain {name}", "name")
        return domain

    async def add(self, name: str) -> Domain:
        name = domain_name(name)
        now = self.clock()
        if not await self.store.add_domain(name, new_keys(name, (), self.box, now), now):
            raise RequestError("already_exists", f"Domain {name} is already added", "name")
        return await self.get(name)

    async def verify(self, name: str) -> Domain:
        """Check every record in DNS now and store what was found."""
        domain = await self.get(name)
        await self._check(domain)
        await self._changed()
        return await self.get(name)

    async def rotate(self, name: str) -> Domain:
        """New keys under a new selector; the old keys sign until the new records are
        verified, and stay valid until retired."""
        domain = await self.get(name)
        taken = [k.selector for k in domain.keys]
        await self.store.add_domain_keys(
            domain.name, new_keys(domain.name, taken, self.box, self.clock())
        )
        return await self.get(name)

    async def retire(self, name: str, selector: str) -> Domain:
        """Stop using a key, so its record may be taken out of DNS. A key that signs
        cannot be retired: rotate, publish and verify the new record first."""
        domain = await self.get(name)
        key = next((k for k in domain.keys if k.selector == selector), None)
        if key is None or key.retired_at is not None:
            why = f"No key {selector!r} in use for {domain.name}"
            raise RequestError("not_found", why, "selector")
        if domain.sending and key in records.signing_keys(domain):
            why = f"{selector} signs {domain.name}'s mail: rotate and verify the new key first"
            raise RequestError("conflict", why, "selector")
        await self.store.retire_domain_key(domain.name, selector, self.clock())
        await self._changed()
        return await self.get(name)

    async def remove(self, name: str) -> None:
        if not await self.store.remove_domain(domain_name(name)):
            raise RequestError("not_found", f"No domain {name}", "name")
        await self._changed()

    async def _check(self, domain: Domain) -> None:
        checks = await verify.check(self.resolver, domain, self.policy)
        checked = records.with_checks(domain, checks, self.clock())
        sending = records.is_sending(checked)
        now = self.clock()
        await self.store.record_domain_check(
            domain.name, checks, sending, now, now + self.intervals[not sending]
        )

    async def check_due(self) -> int:
        """Check every domain due a check (claimed first: one checker per domain even
        with several processes or nodes)."""
        now = self.clock()
        names = await self.store.claim_domain_checks(now, now + self.intervals[1])
        for name in names:
            domain = await self.store.get_domain(name)
            if domain is not None:
                await self._check(domain)
        if names:
            await self._changed()
        return len(names)

    async def run_checks(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.check_due()
            except Exception:
                log.exception("checking domains failed; trying again later")
            try:
                await asyncio.wait_for(stopping.wait(), CHECK_LOOP_SECONDS)
            except TimeoutError:
                pass
