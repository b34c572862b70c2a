"""The Store protocol over a backend engine: every read and state change delegates to
store/queries.py and store/queue.py inside the engine's read or write transaction.

A backend subclasses EngineStore and supplies the engine: _read and _write (how a
connection is found and a transaction committed), plus what really differs per engine:
open/close, enqueue's group commit, the events cursor and how workers wait."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar, cast

from mailgate.mailboxes.models import (
    Folder,
    FolderState,
    Grant,
    GrantStatus,
    MailboxMessage,
    MessageFilter,
    Thread,
    ThreadFilter,
)
from mailgate.models import (
    ApiKey,
    Claim,
    DkimKey,
    Domain,
    Event,
    Message,
    MessageQuery,
    Recipient,
    RecipientStatus,
    RecordCheck,
    Settlement,
    Suppression,
    Webhook,
    WebhookAttempt,
    new_id,
)
from mailgate.store import grants, mailbox, mailbox_reads, queries, queue
from mailgate.store.mailbox import Applied, FolderChanges, Owner
from mailgate.store.protocols import Compaction, Dsn, MessagePage, RecipientGlimpse, Tx
from mailgate.store.rows import event_from_row

T = TypeVar("T")
# Addresses looked up on the caller's thread at most (a big batch's lookup would hold the
# event loop: 500k addresses took ~0.9 s); more go to the reader thread.
READ_NOW_MAX = 1000
Work = Callable[[Tx], Coroutine[Any, Any, T]]

# Every state change besides enqueues, by name: serve's SQLite writer process
# (sqlite/writer.py) runs them for its other processes, so they travel as a name and
# arguments, never as closures. Only these names are accepted there.
CHANGES: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {
    "ping": queue.ping,
    "claim": queue.claim,
    "settle": queue.settle,
    "release": queue.release,
    "recover_leases": queue.recover_leases,
    "cancel": queue.cancel,
    "retry_now": queue.retry_now,
    "add_key": queue.add_key,
    "revoke_key": queue.revoke_key,
    "add_domain": queue.add_domain,
    "add_domain_keys": queue.add_domain_keys,
    "retire_domain_key": queue.retire_domain_key,
    "remove_domain": queue.remove_domain,
    "record_domain_check": queue.record_domain_check,
    "claim_domain_checks": queue.claim_domain_checks,
    "add_webhook": queue.add_webhook,
    "update_webhook": queue.update_webhook,
    "set_webhook_secrets": queue.set_webhook_secrets,
    "delete_webhook": queue.delete_webhook,
    "fan_out": queue.fan_out,
    "queue_webhook_messages": queue.queue_webhook_messages,
    "release_webhook_owner": queue.release_webhook_owner,
    "claim_webhook_messages": queue.claim_webhook_messages,
    "settle_webhook_messages": queue.settle_webhook_messages,
    "release_webhook_message": queue.release_webhook_message,
    "put_suppressions": queue.put_suppressions,
    "delete_suppression": queue.delete_suppression,
    "purge_bodies": queue.purge_bodies,
    "purge_messages": queue.purge_messages,
    "purge_webhook_deliveries": queue.purge_webhook_deliveries,
    "purge_idempotency": queue.purge_idempotency,
    "purge_finished": queue.purge_finished,
    "purge_finished_bodies": queue.purge_finished_bodies,
    "add_grant": grants.add_grant,
    "update_grant": grants.update_grant,
    "set_grant_status": grants.set_grant_status,
    "delete_grant": grants.delete_grant,
    "put_mailbox_folders": mailbox.put_folders,
    "apply_mailbox_changes": mailbox.apply,
    "finish_mailbox_pass": mailbox.finish_pass,
    "set_mailbox_flags": mailbox.set_flags,
    "move_mailbox_message": mailbox.move,
    "delete_mailbox_message": mailbox.delete,
    "claim_mailbox_lease": mailbox.claim_lease,
    "release_mailbox_lease": mailbox.release_lease,
}


class EngineStore:
    point_reads_cheap = False  # a read of a few keys costs less than a round trip

    async def _read(self, fn: Work[T]) -> T:
        raise NotImplementedError

    async def _write(self, fn: Work[T]) -> T:
        """Run fn in one write transaction; return after it is committed."""
        raise NotImplementedError

    async def _read_now(self, fn: Work[T]) -> T:
        """A point read where the engine can do one cheaper than `_read` (SQLite: on
        the caller's thread); by default a read like any other."""
        return await self._read(fn)

    async def _change(self, name: str, *args: Any) -> Any:
        """The state change CHANGES[name](tx, *args) in one write transaction."""
        change = CHANGES[name]
        return await self._write(lambda tx: change(tx, *args))

    async def ping(self) -> None:
        await self._change("ping", f"{os.uname().nodename}:{os.getpid()}")

    # -- reads ----------------------------------------------------------------
    async def get_message(self, message_id: str) -> Message | None:
        return await self._read(lambda tx: queries.get_message(tx, message_id))

    async def get_raw(self, message_id: str) -> bytes | None:
        return await self._read(lambda tx: queries.get_raw(tx, message_id))

    async def load(self, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
        return await self._read(lambda tx: queries.load(tx, message_ids))

    async def recipients(self, message_id: str) -> list[Recipient]:
        return await self._read(lambda tx: queries.recipients(tx, message_id))

    async def recipient_glimpses(
        self, message_ids: Sequence[str], shown: int
    ) -> dict[str, RecipientGlimpse]:
        return await self._read(lambda tx: queries.recipient_glimpses(tx, message_ids, shown))

    async def events(self, message_id: str) -> list[Event]:
        return await self._read(lambda tx: queries.events(tx, message_id))

    async def list_messages(self, query: MessageQuery) -> list[Message]:
        return await self._read(lambda tx: queries.list_messages(tx, query))

    async def idempotent_response(self, api_key_id: str | None, key: str) -> tuple[str, str] | None:
        return await self._read(lambda tx: queries.idempotent_response(tx, api_key_id, key))

    async def status_counts(self) -> dict[RecipientStatus, int]:
        return await self._read(queries.status_counts)

    async def get_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        return await self._read(lambda tx: queries.get_key(tx, key_id))

    async def list_keys(self) -> list[ApiKey]:
        return await self._read(queries.list_keys)

    # -- state changes ----------------------------------------------------------
    async def claim(self, owner: str, now: float, limit: int, lease_seconds: float) -> Claim | None:
        return cast("Claim | None", await self._change("claim", owner, now, limit, lease_seconds))

    async def settle(
        self, owner: str, settlements: Sequence[Settlement], dsns: Sequence[Dsn] = ()
    ) -> int:
        now = time.time()
        return cast("int", await self._change("settle", owner, settlements, dsns, now))

    async def release(self, owner: str, recipient_ids: Sequence[int], now: float) -> int:
        return cast("int", await self._change("release", owner, recipient_ids, now))

    async def recover_leases(self, owner_prefix: str, now: float) -> int:
        return cast("int", await self._change("recover_leases", owner_prefix, now))

    async def cancel(self, message_id: str, now: float) -> int:
        return cast("int", await self._change("cancel", message_id, now))

    async def retry_now(self, message_id: str, now: float) -> int:
        return cast("int", await self._change("retry_now", message_id, now))

    async def add_key(self, key: ApiKey, secret_hash: str) -> None:
        await self._change("add_key", key, secret_hash)

    async def revoke_key(self, key_id: str, now: float) -> bool:
        return cast("bool", await self._change("revoke_key", key_id, now))

    async def event_context(
        self, message_ids: Sequence[str], recipient_ids: Sequence[int]
    ) -> tuple[dict[str, tuple[list[str], dict[str, str]]], dict[int, str]]:
        return await self._read(lambda tx: queries.event_context(tx, message_ids, recipient_ids))

    # -- sending domains ---------------------------------------------------------------
    async def get_domain(self, name: str) -> Domain | None:
        return await self._read(lambda tx: queries.get_domain(tx, name))

    async def list_domains(self) -> list[Domain]:
        return await self._read(queries.list_domains)

    async def sending_keys(self) -> tuple[list[Domain], dict[str, str]]:
        return await self._read(queries.sending_keys)

    async def add_domain(self, name: str, keys: Sequence[tuple[DkimKey, str]], now: float) -> bool:
        return cast("bool", await self._change("add_domain", name, keys, now))

    async def add_domain_keys(self, name: str, keys: Sequence[tuple[DkimKey, str]]) -> bool:
        return cast("bool", await self._change("add_domain_keys", name, keys))

    async def retire_domain_key(self, name: str, selector: str, now: float) -> bool:
        return cast("bool", await self._change("retire_domain_key", name, selector, now))

    async def remove_domain(self, name: str) -> bool:
        return cast("bool", await self._change("remove_domain", name))

    async def record_domain_check(
        self, name: str, checks: dict[str, RecordCheck], sending: bool, now: float, next_at: float
    ) -> bool:
        return cast(
            "bool",
            await self._change("record_domain_check", name, checks, sending, now, next_at),
        )

    async def claim_domain_checks(self, now: float, next_at: float) -> list[str]:
        return cast("list[str]", await self._change("claim_domain_checks", now, next_at))

    # -- webhook endpoints ---------------------------------------------------------------
    async def get_webhook(self, hook_id: str) -> tuple[Webhook, str] | None:
        return await self._read(lambda tx: queries.get_webhook(tx, hook_id))

    async def list_webhooks(self, api_key_id: str | None) -> list[Webhook]:
        return await self._read(lambda tx: queries.list_webhooks(tx, api_key_id))

    async def add_webhook(self, hook: Webhook, sealed_secrets: str) -> None:
        await self._change("add_webhook", hook, sealed_secrets)

    async def update_webhook(self, hook: Webhook) -> bool:
        return cast("bool", await self._change("update_webhook", hook))

    async def set_webhook_secrets(self, hook_id: str, sealed_secrets: str, now: float) -> bool:
        return cast("bool", await self._change("set_webhook_secrets", hook_id, sealed_secrets, now))

    async def delete_webhook(self, hook_id: str) -> bool:
        return cast("bool", await self._change("delete_webhook", hook_id))

    async def queue_webhook_messages(self, rows: Sequence[Sequence[Any]]) -> None:
        await self._change("queue_webhook_messages", rows)

    async def event_by_id(self, event_id: int) -> Event | None:
        row = await self._read(lambda tx: tx.fetchrow("event_by_id", event_id))
        return None if row is None else event_from_row(row)

    async def webhook_lease_owners(self) -> list[str]:
        return [r[0] for r in await self._read(lambda tx: tx.fetch("webhook_lease_owners"))]

    async def release_webhook_owner(self, owner: str, now: float) -> int:
        return cast("int", await self._change("release_webhook_owner", owner, now))

    async def webhook_cursor(self, name: str) -> str | None:
        row = await self._read(lambda tx: tx.fetchrow("webhook_cursor", name))
        return None if row is None else str(row[0])

    async def fan_out(
        self, name: str, old: str | None, new: str, rows: Sequence[Sequence[Any]]
    ) -> bool:
        return cast("bool", await self._change("fan_out", name, old, new, rows))

    async def claim_webhook_messages(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[Any]:
        return cast(
            "list[Any]",
            await self._change("claim_webhook_messages", owner, now, lease_until, limit),
        )

    async def settle_webhook_messages(
        self, owner: str, attempts: Sequence[WebhookAttempt], disable_after: float
    ) -> int:
        return cast(
            "int", await self._change("settle_webhook_messages", owner, attempts, disable_after)
        )

    async def release_webhook_message(self, owner: str, message_id: str, at: float) -> None:
        await self._change("release_webhook_message", owner, message_id, at)

    async def webhook_attempts(self, endpoint_id: str, limit: int) -> list[Any]:
        return list(await self._read(lambda tx: tx.fetch("webhook_attempts", endpoint_id, limit)))

    # -- the suppression list -----------------------------------------------------------
    async def suppressed_among(self, addresses: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        read = self._read_now if len(addresses) <= READ_NOW_MAX else self._read
        return await read(lambda tx: queries.suppressed_among(tx, addresses))

    async def list_suppressions(
        self, reason: str, prefix: str, cursor: tuple[str, str] | None, limit: int
    ) -> list[Suppression]:
        return await self._read(
            lambda tx: queries.list_suppressions(tx, reason, prefix, cursor, limit)
        )

    async def any_suppression(self) -> bool:
        return await self._read(lambda tx: tx.fetchrow("any_suppression")) is not None

    async def count_suppressions(self) -> int:
        row = await self._read(lambda tx: tx.fetchrow("count_suppressions"))
        return int(row[0]) if row else 0

    async def put_suppressions(self, entries: Sequence[Suppression]) -> None:
        await self._change("put_suppressions", entries)

    async def delete_suppression(self, address: str, scope: str | None) -> int:
        return cast("int", await self._change("delete_suppression", address, scope))

    # -- retention (src/mailgate/retention.py) ----------------------------------------
    async def purge_bodies(
        self, cutoff: float, after: str, limit: int, now: float
    ) -> tuple[int, str]:
        return cast(
            "tuple[int, str]", await self._change("purge_bodies", cutoff, after, limit, now)
        )

    async def purge_messages(self, cutoff: float, after: str, limit: int) -> tuple[int, str]:
        return cast("tuple[int, str]", await self._change("purge_messages", cutoff, after, limit))

    async def purge_webhook_deliveries(self, cutoff: float, limit: int) -> int:
        return cast("int", await self._change("purge_webhook_deliveries", cutoff, limit))

    async def purge_idempotency(self, now: float, limit: int) -> int:
        return cast("int", await self._change("purge_idempotency", now, limit))

    async def purge_finished(self, cutoff: float, after: str, limit: int) -> tuple[int, str, float]:
        return cast(
            "tuple[int, str, float]", await self._change("purge_finished", cutoff, after, limit)
        )

    async def purge_finished_bodies(
        self, cutoff: float, after: str, limit: int, now: float
    ) -> tuple[int, str, float]:
        return cast(
            "tuple[int, str, float]",
            await self._change("purge_finished_bodies", cutoff, after, limit, now),
        )

    async def purgeable_messages(self, cutoff: float, after: str, limit: int) -> tuple[int, str]:
        """`purge --dry-run`: the batch purge_finished would take, only read."""
        rows = await self._read(
            lambda tx: tx.fetch(
                "purgeable_messages", after, new_id(cutoff, floor=True), cutoff, limit
            )
        )
        return len(rows), str(rows[-1][0]) if rows else after

    async def purgeable_bodies(
        self, cutoff: float, rows_cutoff: float, after: str, limit: int
    ) -> tuple[int, str]:
        """`purge --dry-run`: the batch purge_finished_bodies would take once the rows'
        step (cutoff `rows_cutoff`) has run, only read."""
        rows = await self._read(
            lambda tx: tx.fetch(
                "body_purgeable_staying",
                after,
                new_id(cutoff, floor=True),
                cutoff,
                rows_cutoff,
                limit,
            )
        )
        return len(rows), str(rows[-1][0]) if rows else after

    async def purgeable_webhook_rows(self, cutoff: float) -> int:
        row = await self._read(lambda tx: tx.fetchrow("count_purgeable_webhooks", cutoff, cutoff))
        return int(row[0]) + int(row[1]) if row else 0

    async def expired_idempotency(self, now: float) -> int:
        row = await self._read(lambda tx: tx.fetchrow("count_expired_idempotency", now))
        return int(row[0]) if row else 0

    async def compact_bodies(self, live_ratio: float, batch: int) -> Compaction:
        """Nothing to compact: this backend keeps bodies in their rows."""
        return Compaction()

    # -- what an operator looks at (`mailgate status`) ---------------------------------
    async def waiting_by_domain(self, limit: int) -> list[tuple[str, int, int, str]]:
        """(route, deferred, waiting in all, the oldest waiting message's id), most first."""
        rows = await self._read(lambda tx: tx.fetch("waiting_by_domain", limit))
        return [(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]

    async def nodes_seen(self) -> list[tuple[str, float]]:
        """Each process that pinged the store (`host:pid`) and when, newest first."""
        return [
            (str(r[0]), float(r[1])) for r in await self._read(lambda tx: tx.fetch("nodes_seen"))
        ]

    # -- grants, the connected mailboxes (store/grants.py) ----------------------------
    async def add_grant(self, grant: Grant, sealed: str) -> None:
        await self._change("add_grant", grant, sealed)

    async def get_grant(self, grant_id: str) -> Grant | None:
        return await self._read(lambda tx: grants.get_grant(tx, grant_id))

    async def grants(self, api_key_id: str | None = None) -> list[Grant]:
        return await self._read(lambda tx: grants.grants(tx, api_key_id))

    async def grant_credentials(self, grant_id: str) -> str | None:
        return await self._read(lambda tx: grants.grant_credentials(tx, grant_id))

    async def grant_scheduled(self, grant_id: str, limit: int) -> list[Message]:
        return await self._read(lambda tx: grants.grant_scheduled(tx, grant_id, limit))

    async def update_grant(self, grant: Grant, sealed: str | None) -> bool:
        return cast("bool", await self._change("update_grant", grant, sealed))

    async def set_grant_status(self, grant_id: str, status: GrantStatus, error: str | None) -> bool:
        return cast(
            "bool",
            await self._change("set_grant_status", grant_id, status.value, error, time.time()),
        )

    async def delete_grant(self, grant_id: str) -> bool:
        return cast("bool", await self._change("delete_grant", grant_id))

    # -- connected mailboxes' sync (store/mailbox.py, mailbox_reads.py) ----------------
    async def mailbox_folders(self, grant_id: str) -> list[FolderState]:
        return await self._read(lambda tx: mailbox_reads.folders(tx, grant_id))

    async def put_mailbox_folders(
        self, grant_id: str, listed: Sequence[tuple[str, str | None]], now: float
    ) -> list[FolderState]:
        return cast(
            "list[FolderState]", await self._change("put_mailbox_folders", grant_id, listed, now)
        )

    async def mailbox_folder_index(
        self, folder_id: str, uids: Sequence[int] | None = None
    ) -> dict[int, tuple[str, bool, bool]]:
        return await self._read(lambda tx: mailbox_reads.folder_index(tx, folder_id, uids))

    async def mailbox_folder_count(self, folder_id: str, below: int) -> int:
        return await self._read(lambda tx: mailbox_reads.folder_count(tx, folder_id, below))

    async def mailbox_folder_list(self, grant_id: str) -> list[Folder]:
        return await self._read(lambda tx: mailbox_reads.folder_list(tx, grant_id))

    async def apply_mailbox_changes(self, owner: Owner, changes: FolderChanges) -> Applied:
        return cast("Applied", await self._change("apply_mailbox_changes", owner, changes))

    async def finish_mailbox_pass(self, owner: Owner, started: float, now: float) -> int:
        return cast("int", await self._change("finish_mailbox_pass", owner, started, now))

    async def set_mailbox_flags(
        self, owner: Owner, message_id: str, unread: bool, starred: bool, now: float
    ) -> None:
        await self._change("set_mailbox_flags", owner, message_id, unread, starred, now)

    async def move_mailbox_message(
        self, owner: Owner, message_id: str, folder_id: str, uid: int, now: float
    ) -> None:
        await self._change("move_mailbox_message", owner, message_id, folder_id, uid, now)

    async def delete_mailbox_message(self, owner: Owner, message_id: str, now: float) -> None:
        await self._change("delete_mailbox_message", owner, message_id, now)

    async def claim_mailbox_lease(
        self, grant_id: str, owner: str, now: float, until: float
    ) -> bool:
        return cast("bool", await self._change("claim_mailbox_lease", grant_id, owner, now, until))

    async def release_mailbox_lease(self, grant_id: str, owner: str) -> None:
        await self._change("release_mailbox_lease", grant_id, owner)

    async def mailbox_message(self, grant_id: str, message_id: str) -> MailboxMessage | None:
        return await self._read(lambda tx: mailbox_reads.get(tx, grant_id, message_id))

    async def mailbox_messages(
        self,
        grant_id: str,
        f: MessageFilter,
        folder_id: str | None,
        after: tuple[float, str] | None,
    ) -> tuple[list[MailboxMessage], str | None]:
        return await self._read(
            lambda tx: mailbox_reads.list_messages(tx, grant_id, f, folder_id, after)
        )

    async def mailbox_threads(
        self,
        grant_id: str,
        f: ThreadFilter,
        folder_id: str | None,
        after: tuple[float, str] | None,
    ) -> tuple[list[Thread], str | None]:
        return await self._read(
            lambda tx: mailbox_reads.list_threads(tx, grant_id, f, folder_id, after)
        )

    async def mailbox_thread(self, grant_id: str, thread_id: str) -> Thread | None:
        return await self._read(lambda tx: mailbox_reads.thread(tx, grant_id, thread_id))

    # -- the dashboard (src/mailgate/ui/) ---------------------------------------------
    async def search_messages(self, query: MessageQuery, budget: int) -> MessagePage:
        return await self._read(lambda tx: queries.search_messages(tx, query, budget))

    async def waiting_routes(self, limit: int) -> list[tuple[str, int]]:
        rows = await self._read(lambda tx: tx.fetch("waiting_routes", limit))
        return [(str(r[0]), int(r[1])) for r in rows]

    async def waiting_at(self, route: str, limit: int) -> list[Recipient]:
        return await self._read(lambda tx: queries.waiting_at(tx, route, limit))

    async def event_ids_at(self, times: Sequence[float]) -> list[int]:
        return await self._read(lambda tx: queries.event_ids_at(tx, times))

    async def event_counts(self, ranges: Sequence[tuple[int, int]]) -> list[dict[str, int]]:
        return await self._read(lambda tx: queries.event_counts(tx, ranges))

    async def waiting_count(self) -> int:
        row = await self._read(lambda tx: tx.fetchrow("waiting_count"))
        return int(row[0]) if row is not None else 0

    async def latest_deferrals(
        self, routes: Sequence[str]
    ) -> dict[str, tuple[int, str | None, str, float]]:
        return await self._read(lambda tx: queries.latest_deferrals(tx, routes))
