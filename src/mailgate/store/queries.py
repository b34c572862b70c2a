"""What the store reads, once for both backends (statements named as in store/sql/)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from mailgate.models import (
    ApiKey,
    DkimKey,
    Domain,
    Event,
    Message,
    MessageQuery,
    Recipient,
    RecipientStatus,
    Suppression,
    SuppressionReason,
    Webhook,
    new_id,
)
from mailgate.store.protocols import BodyMoved, MessagePage, RecipientGlimpse, Row, Tx
from mailgate.store.rows import (
    MESSAGE_COLUMNS,
    domain_from_row,
    domain_key_from_row,
    event_from_row,
    key_from_row,
    message_from_row,
    recipient_from_row,
    webhook_from_row,
)

_LISTED = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))


async def get_message(tx: Tx, message_id: str) -> Message | None:
    row = await tx.fetchrow("get_message", message_id)
    return message_from_row(row) if row else None


# Reads of a body again after its segment went away under them (BodyMoved): compaction
# repoints a row, then removes the old segment; a reader between the two reads once more.
BODY_READS = 3


async def get_raw(tx: Tx, message_id: str) -> bytes | None:
    """The message's bytes; None when there is no such message or retention purged its
    body (the row says when: body_purged_at)."""
    for attempt in range(BODY_READS):
        row = await tx.fetchrow("get_raw", message_id)
        if row is None or row[4] is not None:
            return None
        try:
            return tx.body(row[0], row[1], row[2], row[3])
        except BodyMoved:
            if attempt == BODY_READS - 1:
                raise
    raise AssertionError("unreachable")


async def load(tx: Tx, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
    for attempt in range(BODY_READS):
        out: dict[str, tuple[Message, bytes]] = {}
        try:
            for row in await tx.fetch("load", list(message_ids)):
                message = message_from_row(row)
                out[message.id] = (message, tx.body(row[-3], row[-2], row[-1], message.size))
            return out
        except BodyMoved:
            if attempt == BODY_READS - 1:
                raise
    raise AssertionError("unreachable")


async def recipients(tx: Tx, message_id: str) -> list[Recipient]:
    return [recipient_from_row(r) for r in await tx.fetch("recipients", message_id)]


async def recipient_glimpses(
    tx: Tx, message_ids: Sequence[str], shown: int
) -> dict[str, RecipientGlimpse]:
    """Each message's first `shown` recipients and its recipients counted by status,
    without reading every recipient of a message sent to thousands."""
    found: dict[str, RecipientGlimpse] = {}
    for mid in message_ids:
        first = [recipient_from_row(r) for r in await tx.fetch("first_recipients", mid, shown)]
        counts = {
            RecipientStatus(status): n for status, n in await tx.fetch("message_status_counts", mid)
        }
        found[mid] = RecipientGlimpse(first, counts)
    return found


async def events(tx: Tx, message_id: str) -> list[Event]:
    return [event_from_row(r) for r in await tx.fetch("events", message_id)]


async def event_rows(
    tx: Tx, after: tuple[Any, ...], limit: int, api_key_id: str | None
) -> Sequence[Row]:
    """The outbox feed's rows after a cursor (its fields: the backend's own form),
    of one API key or of all."""
    if api_key_id is None:
        return await tx.fetch("events_since", *after, limit)
    return await tx.fetch("events_since_for_key", *after, api_key_id, limit)


def list_sql(query: MessageQuery) -> tuple[str, list[Any]]:
    """The listing's SQL (`?` parameters) and its arguments; newest first."""
    where: list[str] = []
    args: list[Any] = []

    def add(clause: str, value: Any) -> None:
        where.append(clause)
        args.append(value)

    if query.api_key_id is not None:
        add("m.api_key_id = ?", query.api_key_id)
    if query.cursor:
        add("m.id < ?", query.cursor)
    # ids are ULIDs of created_at, so a time range is an id range on the primary key
    if query.since is not None:
        add("m.id >= ?", new_id(query.since, floor=True))
    if query.until is not None:
        add("m.id < ?", new_id(query.until, floor=True))
    if query.tag is not None:
        add(
            "EXISTS (SELECT 1 FROM message_tags t WHERE t.message_id = m.id AND t.tag = ?)",
            query.tag,
        )
    if query.sender is not None:
        add("m.sender = ?", query.sender)
    if query.subject is not None:
        add("lower(m.subject) LIKE ? ESCAPE '\\'", contains_pattern(query.subject))
    if query.status is not None or query.recipient is not None:
        sub = "SELECT 1 FROM recipients r WHERE r.message_id = m.id"
        if query.status is not None:
            sub += " AND r.status = ?"
            args.append(query.status.value)
        if query.recipient is not None:
            sub += " AND r.address = ?"
            args.append(query.recipient)
        where.append(f"EXISTS ({sub})")
    sql = f"SELECT {_LISTED} FROM messages m"
    if where:
        sql += " WHERE " + " AND ".join(where)
    args.append(query.limit)
    return sql + " ORDER BY m.id DESC LIMIT ?", args


async def list_messages(tx: Tx, query: MessageQuery) -> list[Message]:
    sql, args = list_sql(query)
    return [message_from_row(r) for r in await tx.query(sql, *args)]


async def idempotent_response(tx: Tx, api_key_id: str | None, key: str) -> tuple[str, str] | None:
    row = await tx.fetchrow("idempotent_response", api_key_id or "", key, time.time())
    return (row[0], row[1]) if row else None


async def status_counts(tx: Tx) -> dict[RecipientStatus, int]:
    counts = dict.fromkeys(RecipientStatus, 0)
    for status, n in await tx.fetch("status_counts"):
        counts[RecipientStatus(status)] = n
    return counts


async def get_key(tx: Tx, key_id: str) -> tuple[ApiKey, str] | None:
    row = await tx.fetchrow("get_key", key_id)
    return key_from_row(row) if row else None


async def list_keys(tx: Tx) -> list[ApiKey]:
    return [key_from_row(r)[0] for r in await tx.fetch("list_keys")]


async def get_domain(tx: Tx, name: str) -> Domain | None:
    row = await tx.fetchrow("get_domain", name)
    if row is None:
        return None
    keys = [domain_key_from_row(k) for k in await tx.fetch("domain_keys", name)]
    return domain_from_row(row, keys)


async def list_domains(tx: Tx) -> list[Domain]:
    keys: dict[str, list[DkimKey]] = {}
    for r in await tx.fetch("all_domain_keys"):
        key = domain_key_from_row(r)
        keys.setdefault(key.domain, []).append(key)
    return [domain_from_row(r, keys.get(r[0], [])) for r in await tx.fetch("list_domains")]


async def sending_keys(tx: Tx) -> tuple[list[Domain], dict[str, str]]:
    """The sending domains with their keys not retired, and each such key's sealed
    private key by selector (what every ingress process signs with)."""
    keys: dict[str, list[DkimKey]] = {}
    sealed: dict[str, str] = {}
    for r in await tx.fetch("sending_keys"):
        key = domain_key_from_row(r)
        keys.setdefault(key.domain, []).append(key)
        sealed[f"{key.domain}/{key.selector}"] = r[-1]
    domains = [domain_from_row(r, keys.get(r[0], [])) for r in await tx.fetch("sending_domains")]
    return domains, sealed


async def event_context(
    tx: Tx, message_ids: Sequence[str], recipient_ids: Sequence[int]
) -> tuple[dict[str, tuple[list[str], dict[str, str]]], dict[int, str]]:
    """For a page of events: each message's tags and metadata, each recipient's address."""
    messages = {
        r[0]: (json.loads(r[1]), json.loads(r[2]))
        for r in (await tx.fetch("event_messages", list(message_ids)) if message_ids else ())
    }
    addresses = {
        r[0]: r[1]
        for r in (await tx.fetch("event_recipients", list(recipient_ids)) if recipient_ids else ())
    }
    return messages, addresses


async def get_webhook(tx: Tx, hook_id: str) -> tuple[Webhook, str] | None:
    row = await tx.fetchrow("get_webhook", hook_id)
    return (webhook_from_row(row), row[-1]) if row else None


async def list_webhooks(tx: Tx, api_key_id: str | None) -> list[Webhook]:
    if api_key_id is None:
        rows = await tx.fetch("list_webhooks")
    else:
        rows = await tx.fetch("list_webhooks_for_key", api_key_id)
    return [webhook_from_row(r) for r in rows]


# -- the suppression list ----------------------------------------------------------------


async def suppressed_among(tx: Tx, addresses: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """The entries of these (normalised) addresses: address -> [(scope, reason)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    if not addresses:
        return found
    if len(addresses) == 1:
        rows = await tx.fetch("suppressed_one", addresses[0])
    else:
        rows = await tx.fetch("suppressed_among", list(addresses))
    for address, scope, reason in rows:
        found.setdefault(address, []).append((scope, reason))
    return found


def next_prefix(prefix: str) -> str:
    """The least string above every string that starts with `prefix` ("" for none): its
    last character that can grow, grown by one, and what followed it dropped."""
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i]) + 1
        if code <= 0x10FFFF:
            return prefix[:i] + chr(0xE000 if 0xD800 <= code <= 0xDFFF else code)
    return ""


async def list_suppressions(
    tx: Tx, reason: str, prefix: str, cursor: tuple[str, str] | None, limit: int
) -> list[Suppression]:
    """A page in (address, scope) order after `cursor`; reason "" for every reason."""
    after, scope = cursor or ("", "")
    upto = next_prefix(prefix)
    rows = await tx.fetch(
        "list_suppressions",
        *(after, after, scope, prefix, upto, upto),
        *(len(prefix), prefix, reason, reason, limit),
    )
    return [Suppression(r[0], SuppressionReason(r[2]), r[3], r[1], r[4]) for r in rows]


# -- the dashboard's reads (src/mailgate/ui/) ---------------------------------------------

SEARCH_BATCH_MAX = 2000  # candidates read at once (the batch doubles from the page's size)


def contains_pattern(text: str) -> str:
    """A LIKE pattern (ESCAPE '\\') matching `text` anywhere, lower case."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _candidates(query: MessageQuery) -> tuple[str, str, list[Any]]:
    """The search's driving read: (SQL before its bounds, the id column, its arguments),
    from the most selective index a filter has: the recipient's (address, message_id),
    the tag's (tag, message_id), the key's (api_key_id, id), else the primary key."""
    if query.recipient is not None:
        return (
            "SELECT message_id FROM recipients WHERE address = ?",
            "message_id",
            [query.recipient],
        )
    if query.tag is not None:
        return "SELECT message_id FROM message_tags WHERE tag = ?", "message_id", [query.tag]
    if query.api_key_id is not None:
        return "SELECT id FROM messages WHERE api_key_id = ?", "id", [query.api_key_id]
    return "SELECT id FROM messages WHERE 1 = 1", "id", []


def _checks(query: MessageQuery) -> tuple[str, list[Any]]:
    """The filters the driving index does not answer, checked on each candidate."""
    where: list[str] = []
    args: list[Any] = []
    if query.api_key_id is not None and (query.recipient or query.tag) is not None:
        where.append("m.api_key_id = ?")
        args.append(query.api_key_id)
    if query.sender is not None:
        where.append("m.sender = ?")
        args.append(query.sender)
    if query.subject is not None:
        where.append("lower(m.subject) LIKE ? ESCAPE '\\'")
        args.append(contains_pattern(query.subject))
    if query.tag is not None and query.recipient is not None:
        where.append(
            "EXISTS (SELECT 1 FROM message_tags t WHERE t.tag = ? AND t.message_id = m.id)"
        )
        args.append(query.tag)
    if query.status is not None:  # with a recipient: that recipient has the status
        sub = "SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = ?"
        args.append(query.status.value)
        if query.recipient is not None:
            sub += " AND r.address = ?"
            args.append(query.recipient)
        where.append(f"EXISTS ({sub})")
    return "".join(f" AND {w}" for w in where), args


async def search_messages(tx: Tx, query: MessageQuery, budget: int) -> MessagePage:
    """Messages newest first, as list_messages, reading at most about `budget` candidate
    messages per page: candidates come in id order from the driving index (_candidates)
    and the other filters are checked on them, so a page costs the same with a million
    messages stored as with a thousand. A page that used up its budget before it was
    full says how far it looked (`searched_to`); the next page goes on from there."""
    driver, column, driver_args = _candidates(query)
    checks, check_args = _checks(query)
    upper = query.cursor
    if query.until is not None:
        until = new_id(query.until, floor=True)
        upper = until if upper is None else min(upper, until)
    lower = new_id(query.since, floor=True) if query.since is not None else None
    found: list[Message] = []
    examined = 0
    batch = query.limit if not checks else max(query.limit * 2, 100)
    while True:
        sql, args = driver, list(driver_args)
        if upper is not None:
            sql += f" AND {column} < ?"
            args.append(upper)
        if lower is not None:
            sql += f" AND {column} >= ?"
            args.append(lower)
        rows = await tx.query(f"{sql} ORDER BY {column} DESC LIMIT ?", *args, batch)
        ids = list(dict.fromkeys(r[0] for r in rows))  # an address twice in one message
        if ids:
            marks = ", ".join("?" * len(ids))
            listed = await tx.query(
                f"SELECT {_LISTED} FROM messages m WHERE m.id IN ({marks}){checks}"
                " ORDER BY m.id DESC",
                *ids,
                *check_args,
            )
            found.extend(message_from_row(r) for r in listed)
            examined += len(rows)
            upper = ids[-1]
        if len(found) >= query.limit:
            page = found[: query.limit]
            return MessagePage(page, page[-1].id)
        if len(rows) < batch:  # nothing older matches
            return MessagePage(found, None)
        if examined >= budget:
            return MessagePage(found, upper, searched_to=upper)
        batch = min(batch * 2, SEARCH_BATCH_MAX)


async def waiting_at(tx: Tx, route: str, limit: int) -> list[Recipient]:
    """One route's waiting (queued and deferred) recipients, soonest due first."""
    return [recipient_from_row(r) for r in await tx.fetch("waiting_at", route, limit)]


async def event_ids_at(tx: Tx, times: Sequence[float]) -> list[int]:
    """For each time (ascending), the id of the first event at or after it: a search of
    the primary key (events are written in time order, so their ids and times rise
    together), about 20 point reads a time however many events are stored. An event
    written a moment out of order counts in the neighbouring bucket. Past the last event:
    the last id + 1."""
    last = await tx.fetchrow("last_event_id")
    top = int(last[0]) + 1 if last is not None else 1
    found, lo = [], 0
    for t in times:
        hi = top
        while lo < hi:
            mid = (lo + hi) // 2
            row = await tx.fetchrow("first_event_from", mid)
            if row is None or float(row[1]) >= t:
                hi = mid
            else:
                lo = int(row[0]) + 1
        found.append(lo)
    return found


async def event_counts(tx: Tx, ranges: Sequence[tuple[int, int]]) -> list[dict[str, int]]:
    """The events of each id range [first, end) by kind (a range of the primary key)."""
    counts = []
    for first, end in ranges:
        rows = await tx.fetch("event_kinds_between", first, end) if end > first else []
        counts.append({str(r[0]): int(r[1]) for r in rows})
    return counts


async def latest_deferrals(
    tx: Tx, routes: Sequence[str]
) -> dict[str, tuple[int, str | None, str, float]]:
    """Each route's latest deferral reply (code, enhanced, text, when), where it has one."""
    found = {}
    for route in routes:
        row = await tx.fetchrow("latest_deferral", route)
        if row is not None:
            found[route] = (int(row[0]), row[1], str(row[2] or ""), float(row[3]))
    return found
