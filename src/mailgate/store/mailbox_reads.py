"""Reads of connected mailboxes' rows (store/mailbox.py writes them), once for both
backends: folders with their sync state and counts, a message, the filtered listings
of messages and threads (newest first, pages by (date, id) tokens)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from mailgate.mailboxes.models import (
    Folder,
    FolderRole,
    FolderState,
    MailboxMessage,
    MessageFilter,
    Participant,
    Thread,
    ThreadFilter,
)
from mailgate.store.protocols import Row, Tx

COLUMNS = (
    "id, grant_id, folder_id, uid, thread_id, message_id_header, in_reply_to, refs, subject,"
    " participants, date, snippet, unread, starred, has_attachments, size"
)


def message_from_row(r: Row) -> MailboxMessage:
    people = json.loads(r[9])

    def group(name: str) -> tuple[Participant, ...]:
        return tuple(Participant(str(e), str(n)) for e, n in people.get(name, []))

    return MailboxMessage(
        id=str(r[0]),
        grant_id=str(r[1]),
        folder_id=str(r[2]),
        uid=int(r[3]),
        thread_id=str(r[4]),
        message_id_header=str(r[5]),
        in_reply_to=str(r[6]),
        references=tuple(str(r[7]).split()),
        subject=str(r[8]),
        from_=group("from"),
        to=group("to"),
        cc=group("cc"),
        bcc=group("bcc"),
        reply_to=group("reply_to"),
        date=float(r[10]),
        snippet=str(r[11]),
        unread=bool(r[12]),
        starred=bool(r[13]),
        has_attachments=bool(r[14]),
        size=int(r[15]),
    )


def folder_from_row(r: Row) -> FolderState:
    return FolderState(
        id=str(r[0]),
        grant_id=str(r[1]),
        name=str(r[2]),
        role=None if r[3] is None else FolderRole(r[3]),
        uidvalidity=int(r[4]),
        uidnext=int(r[5]),
        highestmodseq=int(r[6]),
    )


async def folders(tx: Tx, grant_id: str) -> list[FolderState]:
    return [folder_from_row(r) for r in await tx.fetch("mailbox_folders", grant_id)]


async def folder_index(
    tx: Tx, folder_id: str, uids: Sequence[int] | None = None
) -> dict[int, tuple[str, bool, bool]]:
    """The folder's stored messages (those of `uids` only, when given): UID -> (id,
    unread, starred)."""
    if uids is None:
        rows = list(await tx.fetch("mailbox_folder_index", folder_id))
    else:
        rows = []
        wanted = sorted(set(uids))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows += await tx.query(
                "SELECT uid, id, unread, starred FROM mailbox_messages WHERE folder_id = ?"
                f" AND vanished_at IS NULL AND uid IN ({', '.join('?' for _ in chunk)})",
                folder_id,
                *chunk,
            )
    return {int(r[0]): (str(r[1]), bool(r[2]), bool(r[3])) for r in rows}


async def folder_count(tx: Tx, folder_id: str, below: int) -> int:
    """How many of the folder's stored messages have a UID below `below`."""
    row = await tx.fetchrow("mailbox_folder_count", folder_id, below)
    return int(row[0]) if row else 0


async def folder_list(tx: Tx, grant_id: str) -> list[Folder]:
    counts = {
        str(r[0]): (int(r[1]), int(r[2] or 0))
        for r in await tx.fetch("mailbox_folder_counts", grant_id)
    }
    return [
        Folder(s.id, s.grant_id, s.name, s.role, *counts.get(s.id, (0, 0)))
        for s in await folders(tx, grant_id)
    ]


async def get(tx: Tx, grant_id: str, message_id: str) -> MailboxMessage | None:
    row = await tx.fetchrow("get_mailbox_message", message_id, grant_id)
    return None if row is None else message_from_row(row)


def _like(address: str) -> str:
    escaped = address.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"% {escaped} %"


def _where(
    grant_id: str, folder_id: str | None, f: MessageFilter | ThreadFilter
) -> tuple[list[str], list[Any]]:
    """The conditions messages and threads are filtered by alike."""
    unread, starred, has_attachment = f.unread, f.starred, f.has_attachment
    from_, to, any_email, subject = f.from_, f.to, f.any_email, f.subject
    where: list[str] = ["grant_id = ?", "vanished_at IS NULL"]
    args: list[Any] = [grant_id]
    if folder_id is not None:
        where.append("folder_id = ?")
        args.append(folder_id)
    for column, value in (("unread", unread), ("starred", starred)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(int(value))
    if has_attachment is not None:
        where.append("has_attachments = ?")
        args.append(int(has_attachment))
    if from_:
        where.append("from_addresses LIKE ? ESCAPE '\\'")
        args.append(_like(from_))
    if to:
        where.append("to_addresses LIKE ? ESCAPE '\\'")
        args.append(_like(to))
    if any_email:
        ors = []
        for address in any_email:
            ors.append("from_addresses LIKE ? ESCAPE '\\' OR to_addresses LIKE ? ESCAPE '\\'")
            args += [_like(address), _like(address)]
        where.append("(" + " OR ".join(ors) + ")")
    if subject is not None:
        where.append("subject = ?")
        args.append(subject)
    return where, args


def token(date: float, last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([date, last_id]).encode()).decode().rstrip("=")


def untoken(text: str) -> tuple[float, str] | None:
    """A page token back; None when it is not one of ours (the caller says so)."""
    try:
        date, last = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return float(date), str(last)
    except (ValueError, TypeError):
        return None


async def list_messages(
    tx: Tx, grant_id: str, f: MessageFilter, folder_id: str | None, after: tuple[float, str] | None
) -> tuple[list[MailboxMessage], str | None]:
    where, args = _where(grant_id, folder_id, f)
    if f.thread_id is not None:
        where.append("thread_id = ?")
        args.append(f.thread_id)
    if f.received_after is not None:
        where.append("date > ?")
        args.append(f.received_after)
    if f.received_before is not None:
        where.append("date < ?")
        args.append(f.received_before)
    if after is not None:
        where.append("(date < ? OR (date = ? AND id < ?))")
        args += [after[0], after[0], after[1]]
    sql = (
        f"SELECT {COLUMNS} FROM mailbox_messages WHERE {' AND '.join(where)}"
        f" ORDER BY date DESC, id DESC LIMIT {int(f.limit) + 1}"
    )
    found = [message_from_row(r) for r in await tx.query(sql, *args)]
    page = found[: f.limit]
    more = len(found) > f.limit and page
    return page, token(page[-1].date, page[-1].id) if more else None


async def list_threads(
    tx: Tx, grant_id: str, f: ThreadFilter, folder_id: str | None, after: tuple[float, str] | None
) -> tuple[list[Thread], str | None]:
    where, args = _where(grant_id, folder_id, f)
    having: list[str] = []
    hargs: list[Any] = []
    if f.latest_message_after is not None:
        having.append("MAX(date) > ?")
        hargs.append(f.latest_message_after)
    if f.latest_message_before is not None:
        having.append("MAX(date) < ?")
        hargs.append(f.latest_message_before)
    if after is not None:
        having.append("(MAX(date) < ? OR (MAX(date) = ? AND thread_id < ?))")
        hargs += [after[0], after[0], after[1]]
    sql = (
        f"SELECT thread_id, MAX(date) FROM mailbox_messages WHERE {' AND '.join(where)}"
        " GROUP BY thread_id"
        + (f" HAVING {' AND '.join(having)}" if having else "")
        + f" ORDER BY MAX(date) DESC, thread_id DESC LIMIT {int(f.limit) + 1}"
    )
    rows = await tx.query(sql, *args, *hargs)
    page = rows[: f.limit]
    out = []
    for r in page:
        t = await thread(tx, grant_id, str(r[0]))
        if t is not None:
            out.append(t)
    more = len(rows) > f.limit and page
    return out, token(float(page[-1][1]), str(page[-1][0])) if more else None


async def thread(tx: Tx, grant_id: str, thread_id: str) -> Thread | None:
    rows = await tx.fetch("mailbox_thread_messages", grant_id, thread_id)
    if not rows:
        return None
    ms = [message_from_row(r) for r in rows]
    people: list[Participant] = []
    for m in ms:
        for p in (*m.from_, *m.to, *m.cc):
            if all(p.email.lower() != q.email.lower() for q in people):
                people.append(p)
    folder_ids: list[str] = []
    for m in ms:
        if m.folder_id not in folder_ids:
            folder_ids.append(m.folder_id)
    return Thread(
        id=thread_id,
        grant_id=grant_id,
        subject=ms[0].subject,
        message_ids=tuple(m.id for m in ms),
        participants=tuple(people),
        folder_ids=tuple(folder_ids),
        earliest_message_date=ms[0].date,
        latest_message_date=ms[-1].date,
        snippet=ms[-1].snippet,
        unread=any(m.unread for m in ms),
        starred=any(m.starred for m in ms),
        has_attachments=any(m.has_attachments for m in ms),
    )
