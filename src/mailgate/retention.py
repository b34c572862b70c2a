"""Retention: what is kept how long ([retention] in config.py, docs/retention.md), and
the purge that runs in the background where delivery runs (and by hand: `mailgate purge`).

Every `interval` seconds, one round, each step to its end:

    messages      finished messages older than message_days: rows, recipients, events gone
    bodies        finished messages older than body_days: bytes emptied, rows kept
    webhooks      settled webhook deliveries and attempt log lines older than webhook_days
    idempotency   records past their expiry
    compaction    SQLite: body segments with no (or few) live bodies removed or rewritten

Rows go before bodies, so a message past both cutoffs is deleted once instead of having
its body emptied first (a backlog's bodies cost half again as much as their deletion).

Each step runs in transactions with a short pause between them, so a purge of a long
backlog never holds the store (SQLite's write turn) from the doors for more than one
transaction: batch_size rows at first, growing while a backlog lasts and a transaction
stays short (see Batches). Every step is idempotent: two delivery processes (or nodes,
or `mailgate purge` beside a running server) purging at once do no harm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

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
# A transaction's size: batch_size to begin with; while batches come back full (a
# backlog), the next one doubles as long as the last one's statements took less than half
# of BATCH_BUDGET inside the transaction (the store measures it: how long the batch held
# SQLite's write turn, less the commit), up to GROWTH x batch_size; one that took more
# than BATCH_BUDGET halves it again. The wait for the turn is not counted: under load it
# is most of a batch's time, and larger batches wait fewer times for the same work.
# A commit costs a few ms whatever its size: a backlog of 100,000 messages went ~40%
# faster in growing batches than in batches of 500 (docs/benchmarks.md).
BATCH_BUDGET = 0.04
GROWTH = 8  # the largest transaction: 8 x batch_size (4,000 rows at the default 500)
DRY_RUN_BATCH = 5000  # `purge --dry-run` only reads: larger batches


class Step(StrEnum):
    """The steps of a purge round, in the order they run."""

    MESSAGES = "messages"  # finished messages past message_days, with everything theirs
    BODIES = "bodies"  # the bodies of finished messages past body_days
    WEBHOOKS = "webhooks"  # settled webhook delivery rows and attempt lines
    IDEMPOTENCY = "idempotency"  # expired idempotency records
    COMPACTION = "compaction"  # SQLite: body segments removed or rewritten


# After each batch: the step and how many it has done (or, in a dry run, found) so far.
Report = Callable[[Step, int], None]


@dataclass(slots=True)
class Round:
    """What one purge round did (or, from dry_run, would do)."""

    bodies: int = 0
    messages: int = 0
    webhook_rows: int = 0
    idempotency: int = 0
    compaction: Compaction = field(default_factory=Compaction)
    seconds: dict[Step, float] = field(default_factory=dict)  # each step's wall time

    def __bool__(self) -> bool:
        c = self.compaction
        return any((self.bodies, self.messages, self.webhook_rows, self.idempotency)) or bool(
            c.deleted or c.rewritten
        )

    def describe(self) -> str:
        c = self.compaction
        line = (
            f"{self.messages:,} messages, {self.bodies:,} bodies, {self.webhook_rows:,}"
            f" webhook rows, {self.idempotency:,} idempotency records"
        )
        if c.deleted or c.rewritten:
            line += (
                f"; {c.deleted} body segments deleted, {c.rewritten} rewritten"
                f" ({c.freed_bytes / 1e6:,.1f} MB freed)"
            )
        return line

    def fields(self) -> dict[str, float]:
        """The counts and each step's seconds, for a JSON log line (bench/retention.py
        reads them to measure the purge's capacity)."""
        out: dict[str, float] = {
            "purged_messages": self.messages,
            "purged_bodies": self.bodies,
            "purged_webhook_rows": self.webhook_rows,
            "purged_idempotency": self.idempotency,
            "freed_bytes": self.compaction.freed_bytes,
            "moved_bytes": self.compaction.moved_bytes,
        }
        out.update({f"{step}_seconds": round(s, 4) for step, s in self.seconds.items()})
        return out


class Batches:
    """The size of a step's next transaction (see BATCH_BUDGET)."""

    def __init__(self, first: int) -> None:
        self.first = self.size = first

    def took(self, seconds: float) -> None:
        """A full batch (a backlog) held the transaction `seconds`."""
        if seconds > BATCH_BUDGET:
            self.size = max(self.first, self.size // 2)
        elif seconds < BATCH_BUDGET / 2:
            self.size = min(self.first * GROWTH, self.size * 2)


class Retention:
    """The purge as a component (start / stop), run where delivery runs."""

    def __init__(
        self,
        store: Store,
        config: RetentionConfig,
        clock: Callable[[], float] = time.time,
        pause: float = BATCH_PAUSE,
        report: Report | None = None,
    ) -> None:
        self.store, self.config, self.clock, self.pause = store, config, clock, pause
        self.report = report
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
                    log.info("retention: purged %s", done.describe(), extra=done.fields())
            try:
                await asyncio.wait_for(self.stopping.wait(), self.config.interval)
            except TimeoutError:
                pass

    async def run_once(self) -> Round:
        """One round of every step, each to its end."""
        cfg, now = self.config, self.clock()
        done = Round()
        if cfg.message_days > 0:
            cutoff = now - cfg.message_days * DAY
            done.messages = await self._step(
                done,
                Step.MESSAGES,
                lambda after, n: self.store.purge_finished(cutoff, after, n),
            )
        if cfg.body_days > 0:
            cutoff = now - cfg.body_days * DAY
            done.bodies = await self._step(
                done,
                Step.BODIES,
                lambda after, n: self.store.purge_finished_bodies(cutoff, after, n, now),
            )
        if cfg.webhook_days > 0:
            cutoff = now - cfg.webhook_days * DAY
            done.webhook_rows = await self._step(
                done,
                Step.WEBHOOKS,
                lambda after, n: _counted(self.store.purge_webhook_deliveries(cutoff, n)),
            )
        if cfg.expired_idempotency:
            done.idempotency = await self._step(
                done,
                Step.IDEMPOTENCY,
                lambda after, n: _counted(self.store.purge_idempotency(now, n)),
            )
        # Compaction reads every segment's bodies: only after a round that freed some
        # (and once at start, for what an earlier run left)
        if done.bodies or done.messages or not self.compacted_once:
            began = time.monotonic()
            done.compaction = await self.store.compact_bodies(cfg.compact_below, cfg.batch_size)
            done.seconds[Step.COMPACTION] = time.monotonic() - began
            self.compacted_once = True
            if self.report is not None:
                self.report(Step.COMPACTION, done.compaction.deleted + done.compaction.rewritten)
        return done

    async def dry_run(self) -> Round:
        """What run_once would purge now, only read (compaction is not counted: what it
        frees depends on the bodies purged first)."""
        cfg, now = self.config, self.clock()
        found = Round()
        rows_cutoff = now - cfg.message_days * DAY if cfg.message_days > 0 else 0.0
        if cfg.message_days > 0:
            found.messages = await self._count(
                Step.MESSAGES,
                lambda after: self.store.purgeable_messages(rows_cutoff, after, DRY_RUN_BATCH),
            )
        if cfg.body_days > 0:
            cutoff = now - cfg.body_days * DAY
            found.bodies = await self._count(
                Step.BODIES,
                lambda after: self.store.purgeable_bodies(
                    cutoff, rows_cutoff, after, DRY_RUN_BATCH
                ),
            )
        if cfg.webhook_days > 0:
            found.webhook_rows = await self.store.purgeable_webhook_rows(
                now - cfg.webhook_days * DAY
            )
            self._report(Step.WEBHOOKS, found.webhook_rows)
        if cfg.expired_idempotency:
            found.idempotency = await self.store.expired_idempotency(now)
            self._report(Step.IDEMPOTENCY, found.idempotency)
        return found

    async def _step(
        self,
        done: Round,
        step: Step,
        batch: Callable[[str, int], Awaitable[tuple[int, str, float]]],
    ) -> int:
        """Batches until one comes back short. The messages' steps go oldest first, each
        batch after the last one's last id (messages not yet finished are passed over,
        not read again); the others take the oldest rows left each time."""
        began = time.monotonic()
        total, after, size = 0, "", Batches(self.config.batch_size)
        while not self.stopping.is_set():
            asked = size.size
            n, after, held = await batch(after, asked)
            total += n
            self._report(step, total)
            if n < asked:
                break
            size.took(held)
            await asyncio.sleep(self.pause)
        done.seconds[step] = time.monotonic() - began
        return total

    async def _count(self, step: Step, batch: Callable[[str], Awaitable[tuple[int, str]]]) -> int:
        total, after = 0, ""
        while True:
            n, after = await batch(after)
            total += n
            self._report(step, total)
            if n < DRY_RUN_BATCH:
                return total

    def _report(self, step: Step, done: int) -> None:
        if self.report is not None:
            self.report(step, done)


async def _counted(rows: Awaitable[int]) -> tuple[int, str, float]:
    """A step without a cursor (it takes the oldest rows left each time) as a walk's
    batch; its call's time (the wait for the turn too) stands for its hold."""
    began = time.perf_counter()
    n = await rows
    return n, "", time.perf_counter() - began
