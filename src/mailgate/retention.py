"""Retention: what is kept how long ([retention] in config.py, docs/retention.md), and
the purge that runs in the background where delivery runs.

Every `interval` seconds, one round:

    bodies        finished messages older than body_days: bytes emptied, rows kept
    messages      finished messages older than message_days: rows, recipients, events gone
    webhooks      settled webhook deliveries and attempt log lines older than webhook_days
    idempotency   records past their expiry
    compaction    SQLite: body segments with no (or few) live bodies removed or rewritten

Each step runs in transactions of batch_size rows with a short pause between them, so
a purge of a long backlog never holds the store (SQLite's write turn) from the doors for
more than one small transaction. Every step is idempotent: two delivery processes (or
nodes) purging at once do no harm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mailgate.config import RetentionConfig
from mailgate.errors import StoreError
from mailgate.store import Store
from mailgate.store.protocols import Compaction

log = logging.getLogger("mailgate.retention")
DAY = 86400.0
# Seconds between two purge transactions: a commit group of the doors gets the write
# turn in between (the turn is fair, sqlite/engine.py; this keeps the purge from taking
# most of it while a large backlog goes).
BATCH_PAUSE = 0.01


@dataclass(slots=True)
class Round:
    """What one purge round did."""

    bodies: int = 0
    messages: int = 0
    webhook_rows: int = 0
    idempotency: int = 0
    compaction: Compaction = field(default_factory=Compaction)

    def __bool__(self) -> bool:
        c = self.compaction
        return any((self.bodies, self.messages, self.webhook_rows, self.idempotency)) or bool(
            c.deleted or c.rewritten
        )


class Retention:
    """The purge as a component (start / stop), run where delivery runs."""

    def __init__(
        self,
        store: Store,
        config: RetentionConfig,
        clock: Callable[[], float] = time.time,
        pause: float = BATCH_PAUSE,
    ) -> None:
        self.store, self.config, self.clock, self.pause = store, config, clock, pause
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.compacted_once = False

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self, grace: float) -> None:
        self.stopping.set()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                done = await self.run_once()
            except StoreError as exc:  # the store is down: try again next round
                log.warning("retention: purge failed: %s", exc)
            except Exception:  # a full disk in compaction, a missing segment: next round
                log.exception("retention: a purge round failed; trying again next round")
            else:
                if done:
                    log.info("retention: %s", done)
            try:
                await asyncio.wait_for(self.stopping.wait(), self.config.interval)
            except TimeoutError:
                pass

    async def run_once(self) -> Round:
        """One round of every step, each to its end."""
        cfg, now, limit = self.config, self.clock(), self.config.batch_size
        done = Round()
        if cfg.body_days > 0:
            cutoff = now - cfg.body_days * DAY
            done.bodies = await self._walk(
                lambda after: self.store.purge_bodies(cutoff, after, limit, now)
            )
        if cfg.message_days > 0:
            cutoff = now - cfg.message_days * DAY
            done.messages = await self._walk(
                lambda after: self.store.purge_messages(cutoff, after, limit)
            )
        if cfg.webhook_days > 0:
            cutoff = now - cfg.webhook_days * DAY
            done.webhook_rows = await self._repeat(
                lambda: self.store.purge_webhook_deliveries(cutoff, limit)
            )
        if cfg.expired_idempotency:
            done.idempotency = await self._repeat(lambda: self.store.purge_idempotency(now, limit))
        # Compaction reads every segment's bodies: only after a round that freed some
        # (and once at start, for what an earlier run left)
        if done.bodies or done.messages or not self.compacted_once:
            done.compaction = await self.store.compact_bodies(cfg.compact_below, limit)
            self.compacted_once = True
        return done

    async def _walk(self, batch: Callable[[str], Awaitable[tuple[int, str]]]) -> int:
        """Batches oldest first, each after the last one's last id (messages not yet
        finished are passed over, not read again), until one comes back short."""
        total, after = 0, ""
        while not self.stopping.is_set():
            n, after = await batch(after)
            total += n
            if n < self.config.batch_size:
                break
            await asyncio.sleep(self.pause)
        return total

    async def _repeat(self, batch: Callable[[], Awaitable[int]]) -> int:
        total = 0
        while not self.stopping.is_set():
            n = await batch()
            total += n
            if n < self.config.batch_size:
                break
            await asyncio.sleep(self.pause)
        return total
