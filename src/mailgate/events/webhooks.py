"""Webhooks sent from the outbox: never from inside a transaction.

    fan out   read the outbox after the fan-out cursor; one delivery row per matching
              endpoint and event, with the body it will always send; move the cursor in
              the same transaction (compare and set: one process wins each stretch)
    send      claim due rows with a lease; POST each, signed (Standard Webhooks), to an
              address checked again now (no DNS rebinding), no redirects, keep-alive
    decide    2xx delivered; 410 Gone disables the endpoint; anything else, a timeout or
              a refused connection retries on SCHEDULE (about three days) with jitter,
              then fails; an endpoint failing for `disable_after` is disabled
    record    each attempt in the attempt log, fenced by the lease

At least once: a crash after a POST and before its record sends it again when the lease
ends; receivers de-duplicate on `webhook-id`, the event id."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mailgate.config import WebhooksConfig
from mailgate.errors import MailgateError
from mailgate.events import signing, urls
from mailgate.events.endpoints import WebhookAdmin, matches
from mailgate.events.http_client import HttpClient, ProtocolError
from mailgate.events.payloads import PUBLIC_TYPES, Context, payload
from mailgate.models import WebhookAttempt, new_id
from mailgate.shared import alive
from mailgate.store import Store

log = logging.getLogger("mailgate.webhooks")
CURSOR = "fanout"
FAN_OUT_BATCH = 500  # events read per fan-out step
SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)  # ~3 days in all
JITTER = 0.1  # each delay +-10%
IDLE_POLL = 0.1  # seconds between looks at the outbox when there is nothing to do
# After a step that found less than a full batch, the next waits this long: while mail
# flows, a fan-out or claim per event would take SQLite's write turn (and a disk sync)
# hundreds of times a second, away from the doors; gathered, it takes it ~10 times.
GATHER = 0.1
MAX_ERROR = 300  # characters of an error kept in the attempt log
RECOVER_EVERY = 10.0  # seconds between looks for dead senders' leased rows
CLAIM_BATCH = 500  # deliveries claimed, sent (concurrency at a time) and settled together


@dataclass(frozen=True, slots=True)
class Route:
    """An endpoint's deliveries for one batch: the URL, the address checked for it, the
    secrets that sign."""

    dest: urls.Destination
    address: str
    secrets: list[str] = field(repr=False)


def next_delay(attempts_done: int, rng: random.Random) -> float | None:
    """Seconds until the next attempt after `attempts_done` failed ones; None: give up."""
    if attempts_done > len(SCHEDULE):
        return None
    base = SCHEDULE[attempts_done - 1]
    return base * (1 + rng.uniform(-JITTER, JITTER))


class WebhookSender:
    def __init__(
        self,
        store: Store,
        admin: WebhookAdmin,
        cfg: WebhooksConfig,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store, self.admin, self.cfg, self.clock = store, admin, cfg, clock
        self.rng = rng or random.Random()
        self.owner = f"{os.uname().nodename}:{os.getpid()}:webhooks"
        self.client = HttpClient(cfg.timeout)
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.has_endpoints = True  # until the fan-out looks
        self.next_recovery = time.monotonic() + RECOVER_EVERY

    # -- the component -------------------------------------------------------------------
    async def start(self) -> None:
        await self.recover()
        self.task = asyncio.create_task(self.run())

    async def recover(self) -> int:
        """Rows leased by a sender of this node whose process is gone (a crash, a kill)
        are made due now, not when their lease ends (minutes: a lease covers a batch)."""
        node = os.uname().nodename
        released = 0
        for owner in await self.store.webhook_lease_owners():
            host, _, rest = owner.partition(":")
            pid = rest.partition(":")[0]
            if host == node and pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
                released += await self.store.release_webhook_owner(owner, self.clock())
        if released:
            log.warning("webhooks: %d deliveries of a dead sender are due again", released)
        return released

    async def stop(self, grace: float) -> None:
        self.stopping.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, grace)
            except TimeoutError:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()

    async def run(self) -> None:
        """Fan-out and sending in two loops, so neither waits for the other's commits."""
        await asyncio.gather(
            self._loop(self.fan_out, FAN_OUT_BATCH), self._loop(self.send_due, CLAIM_BATCH)
        )

    async def _loop(self, step: Callable[[], Awaitable[int]], full: int) -> None:
        while not self.stopping.is_set():
            try:
                done = await step()
            except Exception:
                log.exception("webhooks: a step failed; trying again shortly")
                done = 0
            if done < full:  # a full batch: more is waiting, go on at once
                try:
                    await asyncio.wait_for(self.stopping.wait(), GATHER if done else IDLE_POLL)
                except TimeoutError:
                    pass

    # -- fan out -------------------------------------------------------------------------
    async def fan_out(self) -> int:
        """One stretch of the outbox into delivery rows; the events read."""
        if not self.has_endpoints:  # (known to exist after a step that found some)
            self.has_endpoints = any(h.enabled for h in await self.store.list_webhooks(None))
            if not self.has_endpoints:  # nothing to send to: the cursor waits (events
                return 0  # before an endpoint's creation are not its: nothing old is sent)
        cursor = await self.store.webhook_cursor(CURSOR)
        events, new = await self.store.events_since(cursor, FAN_OUT_BATCH)
        if not events:
            return 0
        # read again after the events: an endpoint made before one of them happened is
        # committed by now and gets it (read before, it could be missed)
        hooks = [h for h in await self.store.list_webhooks(None) if h.enabled]
        self.has_endpoints = bool(hooks)
        rows: list[tuple[Any, ...]] = []
        # which endpoints want which event first: only those events' payloads are built,
        # and only their messages and recipients read
        chosen = []
        for event in events:
            public = PUBLIC_TYPES.get(event.kind)
            if public is not None:
                wanted = [h for h in hooks if matches(h, public, event.api_key_id, event.at)]
                if wanted:
                    chosen.append((event, wanted))
        if chosen:
            message_ids = sorted({e.message_id for e, _ in chosen if e.message_id})
            rcpt_ids = sorted({e.recipient_id for e, _ in chosen if e.recipient_id is not None})
            context = Context(*await self.store.event_context(message_ids, rcpt_ids))
            now = self.clock()
            for event, wanted in chosen:
                body = payload(event, context)
                if body is None:
                    continue
                text = json.dumps(body, separators=(",", ":"))
                for hook in wanted:
                    rows.append((new_id(now), hook.id, body["id"], text, now, now, now))
        await self.store.fan_out(CURSOR, cursor, new, rows)  # lost the race: read again
        return len(events)

    # -- send ----------------------------------------------------------------------------
    async def send_due(self) -> int:
        if not self.has_endpoints:  # no claim transaction 10 times a second for nothing
            return 0
        if time.monotonic() >= self.next_recovery:  # a sender that died since we started
            self.next_recovery = time.monotonic() + RECOVER_EVERY
            await self.recover()
        now = self.clock()
        # every request of the batch may wait out its timeout, `concurrency` at a time
        lease_until = now + self.cfg.timeout * (CLAIM_BATCH / self.cfg.concurrency + 1) + 30
        rows = await self.store.claim_webhook_messages(self.owner, now, lease_until, CLAIM_BATCH)
        if rows:
            gate = asyncio.Semaphore(self.cfg.concurrency)
            # each endpoint read, its URL checked and resolved, its secrets opened: once a
            # batch, not once a request (the checks cost more than the POST)
            ids = sorted({r[1] for r in rows})  # resolved side by side, not one after another
            routes = dict(
                zip(ids, await asyncio.gather(*(self.route(e, now) for e in ids)), strict=True)
            )

            async def one(row: Any) -> WebhookAttempt | None:
                async with gate:
                    return await self.send_one(
                        routes[row[1]], row[0], row[1], row[2], row[3], row[4]
                    )

            results = await asyncio.gather(*(one(r) for r in rows), return_exceptions=True)
            done = []
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, BaseException):  # a bug, or an answer no check foresaw:
                    log.error("webhooks: sending %s failed: %r", row[0], result)  # it fails
                    result = self.failed(row, f"{type(result).__name__}: {result}"[:MAX_ERROR])
                if result is not None:
                    done.append(result)
            # one transaction for the batch: a commit per attempt bound the rate to the disk
            await self.store.settle_webhook_messages(self.owner, done, self.cfg.disable_after)
        return len(rows)

    def failed(self, row: Any, error: str) -> WebhookAttempt:
        """An attempt that got no answer, retried on the schedule like any other."""
        at = self.clock()
        delay = next_delay(row[4] + 1, self.rng)
        status, next_at = ("failed", None) if delay is None else ("pending", at + delay)
        return WebhookAttempt(row[0], row[1], row[2], at, status, None, 0.0, error, next_at)

    async def route(self, endpoint_id: str, now: float) -> Route | str | None:
        """Where and how an endpoint's deliveries go now; why not (an error to record);
        None when it is gone or disabled."""
        found = await self.store.get_webhook(endpoint_id)
        if found is None or not found[0].enabled:
            return None
        hook, sealed = found
        dest = urls.parse_url(hook.url, self.cfg.allow_http)
        if isinstance(dest, str):
            return f"url {dest}"
        addresses = await urls.addresses(dest.host, self.admin.resolver, self.admin.allowed)
        if isinstance(addresses, str):
            return addresses[:MAX_ERROR]
        try:
            secrets = [secret for secret, _ in self.admin.secrets(sealed, now)]
        except MailgateError as e:  # sealed with another node's secret key
            return str(e)[:MAX_ERROR]
        return Route(dest, str(addresses[0]), secrets)

    async def send_one(
        self,
        route: Route | str | None,
        message_id: str,
        endpoint_id: str,
        event_id: str,
        body: str,
        attempts: int,
    ) -> WebhookAttempt | None:
        """POST one delivery; the attempt to record (None: released unsent)."""
        now = self.clock()
        if route is None:  # disabled meanwhile: wait for its owner
            await self.store.release_webhook_message(self.owner, message_id, now + 3600)
            return None
        started = time.perf_counter()
        if isinstance(route, str):
            answer: tuple[int | None, str | None, str | None] = (None, route, None)
        else:
            answer = await self._post(route, event_id, body.encode(), now)
        code, error, reason = answer
        latency = time.perf_counter() - started
        at = self.clock()
        delivered = code is not None and 200 <= code < 300
        next_at = None
        if delivered:
            status = "delivered"
        elif reason is not None:
            status = "failed"
        else:
            delay = next_delay(attempts + 1, self.rng)
            status = "failed" if delay is None else "pending"
            next_at = None if delay is None else at + delay
        return WebhookAttempt(
            message_id, endpoint_id, event_id, at, status, code, latency, error, next_at, reason
        )

    async def _post(
        self, route: Route, event_id: str, body: bytes, now: float
    ) -> tuple[int | None, str | None, str | None]:
        """(HTTP status, error, reason to disable the endpoint)."""
        headers = signing.headers(route.secrets, event_id, int(now), body)
        headers.update({"Content-Type": "application/json", "User-Agent": "mailgate"})
        try:
            code = await self.client.post(route.dest, route.address, body, headers)
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as e:
            return None, f"{type(e).__name__}: {e}"[:MAX_ERROR], None
        if code == 410:
            return 410, "410 Gone", "the endpoint answered 410 Gone"
        return code, None if 200 <= code < 300 else f"HTTP {code}", None
