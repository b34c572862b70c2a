"""The messages pages: the search (newest first, a cursor per page), one message (its
envelope, recipients, timeline, headers, bodies and raw source), its HTML in a sandbox,
and the two actions on its waiting recipients (retry now, cancel: the store's own)."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from mailgate.http.messages import content_disposition
from mailgate.models import ACTIVE_STATUSES, Message, MessageQuery, RecipientStatus
from mailgate.parsed import ParseError, attachment, describe
from mailgate.store import Store
from mailgate.store.protocols import RecipientGlimpse
from mailgate.ui.gate import PREFIX, Gate, Visitor, field, local_path, read_form
from mailgate.ui.headers import EMAIL_POLICY, INERT_POLICY

PAGE_SIZE = 50
# Candidates a search reads per page at most (queries.search_messages): about 115 ms of
# a 2-core machine with 1,000,000 messages stored when nothing matches (bench/dashboard.py)
SEARCH_BUDGET = 20_000
RAW_SHOWN = 256 * 1024  # bytes of the raw source on the page; the rest by its own link
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
FILTERS = ("recipient", "sender", "subject", "tag", "status", "since", "until")


@dataclass(frozen=True, slots=True)
class Search:
    """The search form as sent: its values (echoed back) and the query they make."""

    values: dict[str, str]
    query: MessageQuery
    problem: str | None


def parse_time(text: str) -> float | None:
    """A datetime-local value (read as UTC) or an ISO 8601 time; None if unreadable."""
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def read_search(params: dict[str, str]) -> Search:
    values = {k: params.get(k, "").strip()[:320] for k in FILTERS}
    problem = None
    status = None
    if values["status"]:
        try:
            status = RecipientStatus(values["status"])
        except ValueError:
            problem = "No such status"  # not echoed: see named()
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        times[name] = parse_time(values[name]) if values[name] else None
        if values[name] and times[name] is None:
            problem = f"{name}: expected a date and time such as 2025-01-31T09:00"
    cursor = params.get("cursor", "")
    query = MessageQuery(
        status=status,
        recipient=values["recipient"] or None,
        tag=values["tag"] or None,
        since=times["since"],
        until=times["until"],
        cursor=cursor if ULID.match(cursor) else None,
        limit=PAGE_SIZE,
        sender=values["sender"] or None,
        subject=values["subject"] or None,
    )
    return Search(values, query, problem)


def named(message_id: str) -> str:
    """A message id for an error page: echoed only when it is one (a link's path is
    anyone's to write, and must not put words of its choosing on the page)."""
    return message_id if ULID.match(message_id) else "(not a message id)"


SHOWN = 3  # recipients named in a list's row (the rest are counted)


def summary(counts: dict[RecipientStatus, int]) -> list[tuple[str, int]]:
    """(status, how many) of a message's recipients, in the statuses' order."""
    return [(s.value, counts[s]) for s in RecipientStatus if counts.get(s)]


class MessagePages:
    def __init__(self, gate: Gate, store: Store) -> None:
        self.gate, self.store = gate, store

    async def search(self, request: Request, visitor: Visitor) -> Response:
        search = read_search(dict(request.query_params))
        rows: list[tuple[Message, RecipientGlimpse]] = []
        page = None
        if search.problem is None:
            page = await self.store.search_messages(search.query, SEARCH_BUDGET)
            glimpses = await self.store.recipient_glimpses([m.id for m in page.messages], SHOWN)
            rows = [(m, glimpses[m.id]) for m in page.messages]
        filters = {k: v for k, v in search.values.items() if v}
        older = None
        if page is not None and page.next_cursor:
            older = f"{PREFIX}/messages?" + urlencode({**filters, "cursor": page.next_cursor})
        return self.gate.pages.render(
            "messages.html",
            status=400 if search.problem else 200,
            visitor=visitor,
            nav="messages",
            values=search.values,
            statuses=[s.value for s in RecipientStatus],
            problem=search.problem,
            rows=[(m, g, summary(g.counts)) for m, g in rows],
            older=older,
            searched_to=page.searched_to if page else None,
            first=f"{PREFIX}/messages?" + urlencode(filters) if search.query.cursor else None,
            filtered=bool(filters),
        )

    async def one(self, request: Request, visitor: Visitor) -> Response:
        message_id = request.path_params["message_id"]
        message = await self.store.get_message(message_id) if ULID.match(message_id) else None
        if message is None:
            return self.gate.error(404, f"No message {named(message_id)}", visitor)
        recipients = await self.store.recipients(message.id)
        events = await self.store.events(message.id)
        raw = await self.store.get_raw(message.id)
        view: dict[str, Any] | None = None
        problem = None
        if raw is not None:
            try:  # a big message takes a while to parse: not on the event loop
                view = await asyncio.to_thread(describe, raw)
            except ParseError as exc:
                problem = str(exc)
        by_id = {r.id: r.address for r in recipients}
        done = request.query_params.get("done", "")
        return self.gate.pages.render(
            "message.html",
            visitor=visitor,
            nav="messages",
            message=message,
            recipients=recipients,
            waiting=any(r.status in ACTIVE_STATUSES for r in recipients),
            events=[(e, by_id.get(e.recipient_id or -1, "")) for e in events],
            view=view,
            problem=problem,
            purged=raw is None,
            raw=raw[:RAW_SHOWN].decode("utf-8", "replace") if raw is not None else "",
            raw_cut=raw is not None and len(raw) > RAW_SHOWN,
            done=done if done in ("retried", "cancelled", "nothing") else "",
        )

    async def html(self, request: Request, visitor: Visitor) -> Response:
        """The message's HTML body, for the sandboxed frame on its page only."""
        view = await self._view(request.path_params["message_id"])
        if view is None or not view.get("html"):
            return PlainTextResponse(
                "No HTML body", 404, headers={"content-security-policy": INERT_POLICY}
            )
        headers = {
            "content-security-policy": EMAIL_POLICY,
            "x-frame-options": "SAMEORIGIN",
            "referrer-policy": "no-referrer",
        }
        return Response(str(view["html"]), media_type="text/html; charset=utf-8", headers=headers)

    async def raw(self, request: Request, visitor: Visitor) -> Response:
        message_id = request.path_params["message_id"]
        raw = await self.store.get_raw(message_id) if ULID.match(message_id) else None
        if raw is None:
            return self.gate.error(
                404, f"No message {named(message_id)}, or its body was purged", visitor
            )
        headers = {"content-security-policy": INERT_POLICY}
        return Response(raw, media_type="text/plain; charset=utf-8", headers=headers)

    async def attachment(self, request: Request, visitor: Visitor) -> Response:
        message_id = request.path_params["message_id"]
        index = int(request.path_params["index"])
        raw = await self.store.get_raw(message_id) if ULID.match(message_id) else None
        found = None
        if raw is not None:
            try:
                found = await asyncio.to_thread(attachment, raw, index)
            except ParseError:
                found = None
        if found is None:
            return self.gate.error(
                404, f"No attachment {index} of message {named(message_id)}", visitor
            )
        filename, _, data = found
        headers = {
            "content-disposition": content_disposition(filename or f"attachment-{index}"),
            "content-security-policy": INERT_POLICY,
        }
        return Response(data, media_type="application/octet-stream", headers=headers)

    async def retry(self, request: Request, visitor: Visitor) -> Response:
        """Make the message's waiting recipients due now (the store writes a retry_now
        event for each and wakes the delivery workers)."""
        message_id = request.path_params["message_id"]
        changed = await self.store.retry_now(message_id, time.time())
        return await self._back(request, message_id, "retried" if changed else "nothing")

    async def cancel(self, request: Request, visitor: Visitor) -> Response:
        message_id = request.path_params["message_id"]
        changed = await self.store.cancel(message_id, time.time())
        return await self._back(request, message_id, "cancelled" if changed else "nothing")

    async def _back(self, request: Request, message_id: str, done: str) -> Response:
        form = await read_form(request)
        page = f"{PREFIX}/messages/{message_id}"
        back = local_path(field(form, "next") if form is not None else None, page)
        path, _, query = back.partition("?")
        params = [(k, v) for k, v in parse_qsl(query) if k != "done"] + [("done", done)]
        return RedirectResponse(f"{path}?{urlencode(params)}", 303)

    async def _view(self, message_id: str) -> dict[str, Any] | None:
        raw = await self.store.get_raw(message_id) if ULID.match(message_id) else None
        if raw is None:
            return None
        try:
            return await asyncio.to_thread(describe, raw)
        except ParseError:
            return None
