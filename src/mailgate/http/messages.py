"""Reading and cancelling messages: list, one with its timeline, its raw bytes, its parsed
view (text, HTML, attachments: what capture mode is read through), cancel.

A key sees only its own messages (another key's are 404, so their existence is not
revealed); an admin key sees all.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.errors import ApiError
from mailgate.http.openapi import ERRORS
from mailgate.models import ApiKey, Message, MessageQuery, Recipient, RecipientStatus, Scope
from mailgate.parsed import ParseError, attachment, describe
from mailgate.store import Store


class Messages:
    def __init__(self, auth: Auth, store: Store) -> None:
        self.auth, self.store = auth, store

    async def list_messages(
        self,
        request: Request,
        status: RecipientStatus | None = None,
        recipient: str | None = Query(None, max_length=320),
        tag: str | None = Query(None, max_length=100),
        since: float | None = Query(None, description="Unix time", allow_inf_nan=False),
        until: float | None = Query(None, description="Unix time", allow_inf_nan=False),
        cursor: str | None = Query(None, pattern=r"^[0-9A-Z]{26}$"),
        limit: int = Query(50, ge=1, le=500),
    ) -> m.MessageList:
        key = await self.auth.key_for(request, Scope.READ)
        query = MessageQuery(
            status=status,
            recipient=recipient,
            tag=tag,
            since=since,  # any finite time: new_id clamps it to what an id can carry
            until=until,
            cursor=cursor,
            limit=limit,
            api_key_id=None if key.has(Scope.ADMIN) else key.id,
        )
        found = await self.store.list_messages(query)
        data = [await message_out(self.store, x, with_events=False) for x in found]
        return m.MessageList(data=data, next_cursor=found[-1].id if len(found) == limit else None)

    async def get_message(self, request: Request, message_id: str) -> m.MessageOut:
        key = await self.auth.key_for(request, Scope.READ)
        message = await visible_message(self.store, message_id, key)
        return await message_out(self.store, message, with_events=True)

    async def get_raw(self, request: Request, message_id: str) -> Response:
        key = await self.auth.key_for(request, Scope.READ)
        message = await visible_message(self.store, message_id, key)
        return Response(await body_of(self.store, message), media_type="message/rfc822")

    async def get_parsed(self, request: Request, message_id: str) -> dict[str, Any]:
        key = await self.auth.key_for(request, Scope.READ)
        message = await visible_message(self.store, message_id, key)
        raw = await body_of(self.store, message)
        try:  # a big message takes a while to parse: not on the event loop
            view = await asyncio.to_thread(describe, raw)
        except ParseError as exc:
            raise ApiError(422, "unparseable", f"The message cannot be parsed: {exc}") from None
        return {"id": message.id, **view}

    async def get_attachment(self, request: Request, message_id: str, index: int) -> Response:
        key = await self.auth.key_for(request, Scope.READ)
        message = await visible_message(self.store, message_id, key)
        raw = await body_of(self.store, message)
        try:
            found = await asyncio.to_thread(attachment, raw, index)
        except ParseError as exc:
            raise ApiError(422, "unparseable", f"The message cannot be parsed: {exc}") from None
        if found is None:
            raise ApiError(404, "not_found", f"No attachment {index}", "index")
        filename, _, data = found
        headers = {
            "content-disposition": content_disposition(filename or f"attachment-{index}"),
            "x-content-type-options": "nosniff",
            "content-security-policy": "sandbox",
        }
        return Response(data, media_type="application/octet-stream", headers=headers)

    async def cancel(self, request: Request, message_id: str) -> m.MessageOut:
        key = await self.auth.key_for(request, Scope.SEND)
        message = await visible_message(self.store, message_id, key)
        await self.store.cancel(message.id, time.time())
        return await message_out(self.store, message, with_events=True)


async def body_of(store: Store, message: Message) -> bytes:
    """The message's bytes; 410 Gone once retention has purged them (docs/retention.md):
    the message itself, its recipients and events still answer until their own cutoff."""
    raw = await store.get_raw(message.id)
    if raw is None:
        raise ApiError(
            410,
            "body_purged",
            f"The body of message {message.id} was purged by retention (retention.body_days);"
            " its status, recipients and events remain",
        )
    return raw


# the answers of the routes that read a body: those of every route, and 410 Gone
BODY_ERRORS = {
    **ERRORS,
    410: {"model": m.ErrorOut, "description": "The body was purged by retention"},
}


BODY_PATHS = ("/{message_id}/raw", "/{message_id}/parsed", "/{message_id}/attachments/{index}")


def router(messages: Messages) -> APIRouter:
    r = APIRouter()
    for method, path, endpoint, answer, summary in (
        ("GET", "", messages.list_messages, m.MessageList, "List messages, newest first"),
        (
            "GET",
            "/{message_id}",
            messages.get_message,
            m.MessageOut,
            "One message with its recipients and event timeline",
        ),
        ("GET", "/{message_id}/raw", messages.get_raw, None, "The stored RFC 5322 bytes"),
        (
            "GET",
            "/{message_id}/parsed",
            messages.get_parsed,
            m.ParsedMessage,
            "The message parsed: addresses, text and HTML bodies, attachments",
        ),
        (
            "GET",
            "/{message_id}/attachments/{index}",
            messages.get_attachment,
            None,
            "One attachment's bytes (as a download)",
        ),
        (
            "POST",
            "/{message_id}/cancel",
            messages.cancel,
            m.MessageOut,
            "Cancel recipients not yet delivered",
        ),
    ):
        r.add_api_route(
            "/v1/messages" + path,
            endpoint,
            methods=[method],
            response_model=answer,
            responses=BODY_ERRORS if path in BODY_PATHS else ERRORS,
            # the raw bytes as they are; every other answer is JSON
            response_class=JSONResponse if answer else Response,
            summary=summary,
        )
    return r


async def visible_message(
    store: Store, message_id: str, key: ApiKey, field: str | None = None
) -> Message:
    """The message, if this key may see it; 404 (naming `field`) otherwise."""
    message = await store.get_message(message_id)
    if message is None or (not key.has(Scope.ADMIN) and message.api_key_id != key.id):
        raise ApiError(404, "not_found", f"No message {message_id}", field)
    return message


async def message_out(store: Store, message: Message, with_events: bool) -> m.MessageOut:
    rcpts = await store.recipients(message.id)
    by_id = {r.id: r.address for r in rcpts}
    events = None
    if with_events:
        events = [
            m.EventOut(
                at=utc(e.at),
                kind=e.kind,
                recipient=by_id.get(e.recipient_id or -1),
                details=e.details,
            )
            for e in await store.events(message.id)
        ]
    return m.MessageOut(
        id=message.id,
        created_at=utc(message.created_at),
        source=message.source,
        sender=message.sender,
        subject=message.subject,
        message_id=message.message_id_header,
        tags=list(message.tags),
        metadata=message.metadata,
        size=message.size,
        scheduled_at=utc(message.scheduled_at) if message.scheduled_at else None,
        recipients=[recipient_out(r) for r in rcpts],
        events=events,
    )


def recipient_out(r: Recipient) -> m.RecipientOut:
    reply = r.last_reply
    return m.RecipientOut(
        address=r.address,
        status=r.status,
        attempts=r.attempts,
        last_reply=f"{reply.code} {reply.enhanced + ' ' if reply.enhanced else ''}{reply.text}"
        if reply
        else None,
        remote_host=r.remote_host,
        next_attempt_at=utc(r.next_attempt_at)
        if r.next_attempt_at and r.status in (RecipientStatus.QUEUED, RecipientStatus.DEFERRED)
        else None,
    )


def content_disposition(filename: str) -> str:
    """`attachment` with the sender's file name made safe for a header: control
    characters (a CR LF would start a header of its own), quotes and backslashes dropped
    from the ASCII fallback, the full name in RFC 6266's filename* (percent-encoded)."""
    visible = "".join(c for c in filename if c.isprintable())[:200] or "attachment"
    fallback = "".join(c if c.isascii() and c not in '"\\' else "_" for c in visible)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(visible, safe='')}"


def utc(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)
