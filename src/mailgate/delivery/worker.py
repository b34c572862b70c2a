"""The delivery loop: claim → resolve → send → decide → record.

Each worker task claims due recipients of one domain (a lease), resolves where that
domain's mail goes, sends each message's recipients in one transaction over one reused
connection, decides every recipient's fate from its Outcome, and records the results
with their events. DSNs for bounces are queued like any other message.

A sandbox key's recipients (route SANDBOX_ROUTE), and every recipient in capture mode,
are answered by the simulator instead (simulator.py): the same decide and record, no DNS
lookup and no connection. Mail sent from a connected mailbox (route "(grant:<id>)") goes
to that mailbox's own submission server with its credentials instead of MX (`MailboxRoutes`,
made by mailboxes/submission.py), then is filed in its Sent folder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from mailgate.config import DeliveryConfig
from mailgate.delivery.bounces import Failure, build_dsn
from mailgate.delivery.mx import MxResolver, Target
from mailgate.delivery.outcome import Outcome, Step, Verdict, permanent, temporary
from mailgate.delivery.retry_policy import RetryPolicy, after_temporary_failure
from mailgate.delivery.smtp_client import Session, Transaction, header_end
from mailgate.errors import StoreError, StoreUnavailable
from mailgate.ingress.accept import Client, Door, Refusal, Submission
from mailgate.ingress.smtp_rules import header_facts
from mailgate.models import (
    SANDBOX_ROUTE,
    Claim,
    Message,
    Recipient,
    RecipientStatus,
    Settlement,
    Source,
    SuppressionReason,
    domain_of,
    grant_of_route,
)
from mailgate.simulator import CAPTURED, simulate
from mailgate.store import Dsn, Store
from mailgate.suppressions import condemns, normalize, stopped_by

log = logging.getLogger("mailgate.delivery")
GATHER_SECONDS = 0.02  # a claim a few ms later carries many messages, not one
SETTLE_PATIENCE = 30.0  # seconds a settle is tried again while the store cannot commit
RECORD_EVERY = 10  # recipients settled per store write while a claim is being sent
MAX_HOPS = 50  # Received headers beyond this mean a mail loop (RFC 5321 6.3)


class Pacer:
    """At most `rate` messages per second to one domain (0: unlimited)."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate, self.clock = rate, clock
        self.next_at = 0.0

    async def wait(self) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        at = max(now, self.next_at)
        self.next_at = at + 1.0 / self.rate
        if at > now:
            await asyncio.sleep(at - now)


# a session to one target: (target, port, on_close) -> an unopened Session
OpenSession = Callable[[Target, int, Callable[[], None]], Session]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a route that is not a domain goes: its hosts and how a session logs in."""

    targets: list[Target]
    open_session: OpenSession


class MailboxRoutes(Protocol):
    """Connected mailboxes' side of delivery (mailboxes/submission.py)."""

    async def destination(self, grant_id: str) -> Destination | Outcome:
        """The grant's submission server, or why its mail cannot go now (deleted grant:
        permanent; an unreachable host: temporary)."""
        ...

    async def delivered(self, grant_id: str, sent: list[tuple[Message, bytes, int]]) -> None:
        """File messages just delivered (each with how many of its recipients this claim
        delivered) in the grant's Sent folder, once a message; never raises."""
        ...


def owner_prefix(pid: int) -> str:
    """The start of every lease owner name a process on this host with this pid uses."""
    return f"{os.uname().nodename}:{pid}:"


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One transaction to send: some (`pending`) of one message's recipients (`rcpts`)."""

    rcpts: list[Recipient]
    pending: list[Recipient]
    tx: Transaction


def transaction(message: Message, raw: bytes, rcpts: list[Recipient]) -> Transaction:
    """The transaction carrying `raw` to `rcpts`."""
    return Transaction(
        message.sender,
        tuple(r.address for r in rcpts),
        raw,
        message.source is Source.SMTP,  # its door refused bare CR and LF
    )


def by_message(claim: Claim) -> dict[str, list[Recipient]]:
    """A claim's recipients grouped by message, in claim order."""
    grouped: dict[str, list[Recipient]] = defaultdict(list)
    for r in claim.recipients:
        grouped[r.message_id].append(r)
    return grouped


class Deliverer:
    def __init__(
        self,
        store: Store,
        cfg: DeliveryConfig,
        hostname: str,
        door: Door,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        own_endpoints: set[tuple[str, int]] | None = None,
        lease_seconds: float = 900.0,
        mailboxes: MailboxRoutes | None = None,
    ) -> None:
        self.mailboxes = mailboxes  # None: a grant's mail waits (deferred) for a process with it
        self.store, self.cfg, self.clock = store, cfg, clock
        self.lease_seconds = lease_seconds
        self.door = door  # DSNs pass its rules, as every other way in does
        self.hostname = hostname
        self.ehlo = cfg.ehlo_hostname or hostname
        self.rng = rng or random.Random()
        self.resolver = MxResolver(cfg.resolver, cfg.allow_private_networks, clock, self.rng)
        self.policy = RetryPolicy(cfg.retry_first, cfg.retry_max, cfg.retry_jitter, cfg.lifetime)
        self.owner = owner_prefix(os.getpid()) + uuid.uuid4().hex[:8]
        self.slots: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(cfg.max_connections_per_domain)
        )
        self.host_slots: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(cfg.max_connections_per_host)
        )
        self.pacers: dict[str, Pacer] = defaultdict(lambda: Pacer(cfg.domain_rate, clock))
        self.own_endpoints = own_endpoints or set()
        self.stopping = asyncio.Event()
        self._idle: deque[asyncio.Future[None]] = deque()

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver until `stopping`. Raises what ended a worker or the watcher (a bug, not
        a recipient's fault: those become outcomes), after stopping the others, so that
        the process exits and is replaced instead of living on without delivering."""
        watcher = asyncio.create_task(self._watch())
        workers = [asyncio.create_task(self._worker()) for _ in range(self.cfg.concurrency)]
        tasks = {watcher, *workers}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()  # a worker cancelled in a claim hands its recipients back
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error

    async def _watch(self) -> None:
        """Wake one idle worker per store notification (or each second, for retries that
        came due). Waking them all made every commit cost `concurrency` claim queries."""
        while not self.stopping.is_set():
            stop = asyncio.ensure_future(self.stopping.wait())
            work = asyncio.ensure_future(self.store.wait_for_work(1.0))
            try:
                await asyncio.wait({stop, work}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # cancelled too: leave no waiter behind
                for task in (stop, work):
                    task.cancel()
            if self.stopping.is_set():
                break
            if work.done() and not work.cancelled():
                # new mail: let a few milliseconds of commits gather into one claim
                await asyncio.sleep(GATHER_SECONDS)
            self._kick()
        for fut in self._idle:  # stopping: every idle worker wakes to see it
            if not fut.done():
                fut.set_result(None)

    def _kick(self) -> None:
        """Wake one idle worker; a worker that found work wakes the next (a chain)."""
        while self._idle:
            fut = self._idle.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            try:
                worked = await self.step()
            except StoreError as exc:
                log.warning("delivery: store trouble, pausing: %s", exc)
                await asyncio.sleep(1)
                continue
            if not worked and not self.stopping.is_set():
                fut: asyncio.Future[None] = loop.create_future()
                self._idle.append(fut)
                await fut

    async def step(self) -> bool:
        """Deliver one claim; False when nothing was due."""
        claim = await self.store.claim(
            self.owner, self.clock(), self.cfg.claim_batch, self.lease_seconds
        )
        if claim is None:
            return False
        if len(claim.recipients) >= self.cfg.claim_batch:
            self._kick()  # a full claim: more may be due, let an idle worker look now
        for r in claim.recipients:
            if r.lease_owner is not None:
                log.warning(
                    "delivery: %s of message %s was in flight when worker %s stopped;"
                    " sending it again (a possible duplicate)",
                    r.address,
                    r.message_id,
                    r.lease_owner,
                    extra={"message_id": r.message_id},
                )
        try:
            await self.deliver(claim)
        except Exception as exc:
            if isinstance(exc, StoreError):  # the store's trouble, not the recipients'
                await self._release(claim)
                raise
            log.exception("delivery: unexpected error delivering to %s", claim.domain)
            await self._defer_after_error(claim)
        except BaseException:  # cancelled: hand the recipients back, do not sit on the lease
            await self._release(claim)
            raise
        return True

    async def _release(self, claim: Claim) -> None:
        await self.store.release(self.owner, [r.id for r in claim.recipients], self.clock())

    async def _defer_after_error(self, claim: Claim) -> None:
        """Settle what a failed claim left unsettled as a local temporary failure: the
        retry schedule applies and it expires in time, where handing it back would have
        it claimed again at once, failing in a loop. Settled ones are skipped (fencing)."""
        error = temporary("Local error while delivering, will retry", enhanced="4.3.0")
        try:
            messages = await self._load(claim)
            settled = [self.decide(r, error, messages[r.message_id][0]) for r in claim.recipients]
            await self.record(settled, list(claim.recipients), messages)
        except Exception:
            log.exception("delivery: could not record the error; handing %s back", claim.domain)
            await self._release(claim)

    async def deliver(self, claim: Claim) -> None:
        messages = await self._load(claim)
        claim = await self._unlisted(claim, messages)
        if not claim.recipients:
            return
        if claim.domain == SANDBOX_ROUTE or self.cfg.mode == "capture":
            answers = [self.simulated(r, messages[r.message_id][0]) for r in claim.recipients]
            await self.record(answers, list(claim.recipients), messages)
            return
        grant_id = grant_of_route(claim.domain)
        opener: OpenSession | None = None
        if grant_id is not None:
            found = await self._destination(grant_id)
            targets, opener = (
                (found, None) if isinstance(found, Outcome) else (found.targets, found.open_session)
            )
        else:
            targets = await self.resolve(claim.domain)
        records: list[asyncio.Task[None]] = []
        settled: list[Settlement] = []
        finished: list[Recipient] = []
        delivered: dict[str, tuple[Message, bytes, int]] = {}  # a grant's, to file in Sent

        def flush() -> None:
            if settled:
                task = self.record(settled[:], finished[:], messages)
                records.append(asyncio.create_task(task))
                settled.clear()
                finished.clear()

        def done(rcpts: list[Recipient], outcomes: dict[int, Outcome]) -> None:
            # Recorded every few messages, not after the whole claim: a crash then resends
            # only the last few (in flight), and the store folds the writes together.
            message = messages[rcpts[0].message_id][0]
            settled.extend(self.decide(r, outcomes[r.id], message) for r in rcpts)
            finished.extend(rcpts)
            if grant_id is not None:
                count = sum(outcomes[r.id].verdict is Verdict.DELIVERED for r in rcpts)
                if count:
                    delivered[message.id] = (message, messages[message.id][1], count)
            if len(finished) >= RECORD_EVERY:
                flush()

        try:
            if isinstance(targets, Outcome):
                for rcpts in by_message(claim).values():
                    done(rcpts, dict.fromkeys((r.id for r in rcpts), targets))
            else:
                async with self.slots[claim.domain]:
                    await self.send(claim, targets, messages, done, opener)
        finally:
            flush()
            await asyncio.gather(*records)
        if delivered and grant_id is not None and self.mailboxes is not None:
            # Filed only once the delivery is recorded: a crash between the two leaves the
            # message delivered (never sent twice) but missing from the mailbox's Sent.
            await self.mailboxes.delivered(grant_id, list(delivered.values()))

    async def _destination(self, grant_id: str) -> Destination | Outcome:
        if self.mailboxes is None:  # this process cannot open the grant's credentials
            return temporary("Mailbox delivery is not available in this process", enhanced="4.3.0")
        return await self.mailboxes.destination(grant_id)

    # -- steps ------------------------------------------------------------------------------
    async def _unlisted(self, claim: Claim, messages: dict[str, tuple[Message, bytes]]) -> Claim:
        """The claim without the recipients put on the suppression list since their
        message was accepted (a scheduled send, a retry): those are settled `suppressed`
        now, never sent. One read for the claim."""
        found = await self.store.suppressed_among(
            list(dict.fromkeys(normalize(r.address) for r in claim.recipients))
        )
        if not found:
            return claim
        froms: dict[str, str | None] = {}

        def from_domain(message_id: str) -> str | None:
            if message_id not in froms:
                addresses = header_facts(messages[message_id][1]).from_addresses
                froms[message_id] = domain_of(addresses[0]) if addresses else None
            return froms[message_id]

        stopped, kept = [], []
        for r in claim.recipients:
            entries = found.get(normalize(r.address), ())
            scoped = any(scope for scope, _ in entries)
            reason = stopped_by(r.address, from_domain(r.message_id) if scoped else None, found)
            if reason is None:
                kept.append(r)
            else:
                stopped.append(Settlement(r.id, RecipientStatus.SUPPRESSED, None, reason=reason))
        if stopped:
            log.info("delivery: %d recipients were suppressed after acceptance", len(stopped))
            await self._settle(stopped, [])
        return replace(claim, recipients=tuple(kept))

    async def _load(self, claim: Claim) -> dict[str, tuple[Message, bytes]]:
        loaded = await self.store.load(list(dict.fromkeys(r.message_id for r in claim.recipients)))
        assert len(loaded) == len({r.message_id for r in claim.recipients}), (
            "recipients never outlive their messages"
        )
        return loaded

    async def resolve(self, domain: str) -> list[Target] | Outcome:
        if self.cfg.smarthost:
            host, _, port = self.cfg.smarthost.rpartition(":")
            return [Target(host, host, 0, int(port or 25))]
        return await self.resolver.targets(domain)

    def _port(self, target: Target) -> int:
        return target.port or self.cfg.port

    async def send(
        self,
        claim: Claim,
        targets: list[Target],
        messages: dict[str, tuple[Message, bytes]],
        done: Callable[[list[Recipient], dict[int, Outcome]], None],
        opener: OpenSession | None = None,
    ) -> None:
        """One transaction per message, one connection reused, the next MX on connection
        failure; `done` gets each message's outcomes per recipient id as they come.
        `opener` makes the sessions of a route with its own login (a grant's).

        Each transaction is sent with the next one as `then`, so the next envelope
        leaves with this message's data (smtp_client.Session.send); not while the domain
        is paced, where each message must wait for its turn before any of it goes."""
        outcomes: dict[int, Outcome] = {}
        session: Session | None = None
        index = 0
        failure: Outcome = permanent("no destination", "5.4.4")
        ahead = self.cfg.domain_rate <= 0
        queue: deque[_Attempt] = deque()
        for message_id, rcpts in by_message(claim).items():
            message, raw = messages[message_id]
            head = raw[: header_end(raw)]  # a body quoting Received lines is no loop
            if head.count(b"\r\nReceived:") + head.startswith(b"Received:") > MAX_HOPS:
                loop = permanent("Mail loop detected (too many hops)", "5.4.6", 554)
                done(rcpts, dict.fromkeys((r.id for r in rcpts), loop))
            else:
                queue.append(_Attempt(rcpts, rcpts, transaction(message, raw, rcpts)))

        def settle(attempt: _Attempt, result: dict[str, Outcome] | Outcome) -> None:
            for r in attempt.pending:
                outcomes[r.id] = result if isinstance(result, Outcome) else result[r.address]
            if all(r.id in outcomes for r in attempt.rcpts):
                done(attempt.rcpts, {r.id: outcomes[r.id] for r in attempt.rcpts})

        try:
            while queue:
                attempt = queue.popleft()
                if session is None:
                    if index >= len(targets):
                        settle(attempt, failure)
                        continue
                    target = targets[index]
                    if (target.address, self._port(target)) in self.own_endpoints:
                        failure = permanent(
                            "Destination is this mail server (loop)", "5.4.6", 554, target.host
                        )
                        index += 1
                        queue.appendleft(attempt)
                        continue
                    host_slot = self.host_slots[target.address]
                    await host_slot.acquire()
                    if opener is not None:
                        session = opener(target, self._port(target), host_slot.release)
                    else:
                        session = Session(
                            target,
                            self._port(target),
                            self.cfg,
                            self.ehlo,
                            on_close=host_slot.release,
                        )
                    problem = await session.open()
                    if problem is not None:
                        await session.close()
                        failure, session, index = problem, None, index + 1
                        queue.appendleft(attempt)
                        continue
                await self.pacers[claim.domain].wait()
                then = queue[0].tx if ahead and queue else None
                result = await session.send(attempt.tx, then)
                if isinstance(result, Outcome):  # connection lost: next MX
                    await session.close()
                    failure, session, index = result, None, index + 1
                    queue.appendleft(attempt)
                    continue
                if not session.usable:  # it dropped the connection: a fresh one next
                    await session.close()
                    session = None
                too_many = [r for r in attempt.pending if result[r.address].reply.code == 452]
                if too_many and len(too_many) < len(attempt.pending):
                    # 452 too many recipients: the rest go in another transaction, next
                    # but for the one whose envelope may have gone out already (the
                    # message's outcomes are recorded once all of them are known)
                    message, raw = messages[attempt.rcpts[0].message_id]
                    later = _Attempt(attempt.rcpts, too_many, transaction(message, raw, too_many))
                    queue.insert(0 if then is None else 1, later)
                    attempt = _Attempt(
                        attempt.rcpts, [r for r in attempt.pending if r not in too_many], attempt.tx
                    )
                settle(attempt, result)
        finally:
            if session is not None:
                await session.close()

    def decide(self, r: Recipient, outcome: Outcome, message: Message) -> Settlement:
        now = self.clock()
        suppress = None
        if outcome.verdict is Verdict.DELIVERED:
            status, at = RecipientStatus.DELIVERED, None
        elif outcome.verdict is Verdict.PERMANENT:
            status, at = RecipientStatus.BOUNCED, None
            local = outcome.step is None
            if condemns(outcome.reply, outcome.step is Step.RCPT, local):
                suppress = SuppressionReason.HARD_BOUNCE
        else:
            status, at = after_temporary_failure(
                r.attempts + 1, message.created_at, now, self.policy, self.rng
            )
        return Settlement(r.id, status, outcome.reply, outcome.remote_host, at, suppress)

    def simulated(self, r: Recipient, message: Message) -> Settlement:
        """A sandbox recipient's simulated outcome (capture mode: every recipient's is
        CAPTURED), decided like a real one."""
        if r.domain != SANDBOX_ROUTE:
            return self.decide(r, CAPTURED, message)
        sim = simulate(r.address, r.attempts)
        settlement = self.decide(r, sim.outcome, message)
        if sim.expire:
            settlement = replace(settlement, status=RecipientStatus.EXPIRED, next_attempt_at=None)
        if sim.complaint:
            settlement = replace(settlement, suppress=SuppressionReason.COMPLAINT)
        return settlement

    async def record(
        self,
        settlements: list[Settlement],
        rcpts: list[Recipient],
        messages: dict[str, tuple[Message, bytes]],
    ) -> None:
        """Settle the recipients and queue the DSNs for their bounces in one transaction."""
        failed: dict[str, list[tuple[int, Failure]]] = defaultdict(list)
        by_id = {r.id: r for r in rcpts}
        for s in settlements:
            if s.status not in (RecipientStatus.BOUNCED, RecipientStatus.EXPIRED):
                continue
            r = by_id[s.recipient_id]
            expired = s.status is RecipientStatus.EXPIRED
            code = (
                "4.4.7"
                if expired
                else (s.reply.enhanced if s.reply and s.reply.enhanced else "5.0.0")
            )
            failure = Failure(r.address, code, s.reply, s.remote_host, expired)
            failed[r.message_id].append((r.id, failure))
        dsns: list[Dsn] = []
        for message_id, failures in failed.items():
            message, raw = messages[message_id]
            if self._wants_dsn(message):
                sandbox = by_id[failures[0][0]].domain == SANDBOX_ROUTE
                dsn = await self._dsn(message, raw, failures, sandbox)
                if dsn is not None:
                    dsns.append(dsn)
        await self._settle(settlements, dsns)

    async def _settle(self, settlements: list[Settlement], dsns: list[Dsn]) -> None:
        """Settle, trying again while the store cannot commit (serve's SQLite writer
        process being restarted, a database failover): the outcomes are known, and giving
        up would leave the recipients leased until the lease ends and send them again."""
        delay, deadline = 0.05, time.monotonic() + SETTLE_PATIENCE
        while True:
            try:
                await self.store.settle(self.owner, settlements, dsns)
                return
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _wants_dsn(self, message: Message) -> bool:
        if not message.sender or message.source is Source.DSN:
            return False  # a bounce is never bounced
        return message.source is Source.SMTP or self.cfg.dsn_for_api

    async def _dsn(
        self, message: Message, raw: bytes, failures: list[tuple[int, Failure]], sandbox: bool
    ) -> Dsn | None:
        """The DSN reporting `failures`, through the door's rules like any other mail
        (headers, signing, the suppression list: a listed sender gets it as suppressed);
        a sandbox message's DSN stays in the sandbox. Committed by settle, in the bounce's
        own transaction."""
        now = self.clock()
        text = build_dsn(
            raw, message.sender, [f for _, f in failures], self.hostname, message.created_at, now
        )
        reported = tuple(rid for rid, _ in failures)
        submission = Submission(
            "", (message.sender,), text, Source.DSN, Client("", "local"), sandbox=sandbox
        )
        prepared = self.door.prepare(submission)
        screened = prepared if isinstance(prepared, Refusal) else await self.door.screen([prepared])
        if isinstance(screened, Refusal) and screened.temporary:
            # The list cannot be read now: the DSN goes unscreened (to a listed sender it
            # is one more bounce of the null sender) rather than the claim being handed
            # back, which would send its delivered recipients again.
            log.warning(
                "delivery: DSN to %s not screened: %s",
                message.sender,
                screened.reason,
                extra={"message_id": message.id},
            )
            screened = [prepared] if not isinstance(prepared, Refusal) else prepared
        if isinstance(screened, Refusal):
            log.info(
                "delivery: no DSN to %s: %s",
                message.sender,
                screened.reason,
                extra={"message_id": message.id},
            )
            return None
        return Dsn(screened[0], reported)
