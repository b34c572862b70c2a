"""A grant's mailbox read through Nylas v3 (the sync's store, mailboxes/service.py):

GET    /v3/grants/{g}/messages             list (limit, page_token, in, unread,
                                           starred, from, to, any_email, subject,
                                           received_after/before, has_attachment,
                                           thread_id)
GET    /v3/grants/{g}/messages/{id}        one, with its body and attachments
PUT    /v3/grants/{g}/messages/{id}        unread, starred, folders
DELETE /v3/grants/{g}/messages/{id}        to the Trash
GET    /v3/grants/{g}/threads[/{id}]
GET    /v3/grants/{g}/folders[/{id}]
GET    /v3/grants/{g}/attachments/{id}[/download]?message_id=
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from starlette.datastructures import QueryParams
from starlette.responses import Response

from mailgate.http.errors import ApiError
from mailgate.http.nylas.shapes import (
    answer,
    deleted,
    flag,
    folder_json,
    message_json,
    number,
    page,
    texts,
    thread_json,
)
from mailgate.mailboxes.models import (
    Folder,
    FolderRole,
    Grant,
    MailboxMessage,
    MessageFilter,
    Thread,
    ThreadFilter,
)
from mailgate.parsed import ParseError, attachment, describe

LIST_MAX = 200  # Nylas' page limit


class MailboxReader(Protocol):
    """What these routes ask of the sync's store (mailboxes/service.py Mailboxes)."""

    async def messages(
        self, grant: Grant, query: MessageFilter
    ) -> tuple[list[MailboxMessage], str | None]: ...

    async def message(self, grant: Grant, message_id: str) -> MailboxMessage | None: ...

    async def raw(self, grant: Grant, message_id: str) -> bytes | None: ...

    async def update(
        self,
        grant: Grant,
        message_id: str,
        *,
        unread: bool | None = None,
        starred: bool | None = None,
        folder_ids: list[str] | None = None,
    ) -> MailboxMessage:
        """NotFound when there is no such message (or folder)."""

    async def delete(self, grant: Grant, message_id: str) -> None:
        """To the Trash (from the Trash: gone); NotFound when there is no such message."""

    async def threads(
        self, grant: Grant, query: ThreadFilter
    ) -> tuple[list[Thread], str | None]: ...

    async def thread(self, grant: Grant, thread_id: str) -> Thread | None: ...

    async def folders(self, grant: Grant) -> list[Folder]: ...

    async def append(
        self, grant: Grant, role: FolderRole, raw: bytes, flags: tuple[str, ...] = ()
    ) -> Any: ...

    async def sync_now(self, grant: Grant) -> Any: ...


def seconds(params: QueryParams, name: str) -> float | None:
    value = number(params, name, 0, 2**40)
    return None if value is None else float(value)


def one(params: QueryParams, name: str) -> str | None:
    values = texts(params, name)
    return values[0] if values else None


def _shared(params: QueryParams) -> dict[str, Any]:
    """The query parameters messages and threads are listed by alike."""
    return {
        "in_folder": one(params, "in"),
        "unread": flag(params, "unread"),
        "starred": flag(params, "starred"),
        "from_": one(params, "from"),
        "to": one(params, "to"),
        "any_email": tuple(texts(params, "any_email")),
        "subject": params.get("subject") or None,
        "has_attachment": flag(params, "has_attachment"),
        "limit": number(params, "limit", 1, LIST_MAX) or 50,
        "page_token": params.get("page_token") or None,
    }


def message_filter(params: QueryParams) -> MessageFilter:
    return MessageFilter(
        **_shared(params),
        received_after=seconds(params, "received_after"),
        received_before=seconds(params, "received_before"),
        thread_id=params.get("thread_id") or None,
    )


def thread_filter(params: QueryParams) -> ThreadFilter:
    return ThreadFilter(
        **_shared(params),
        latest_message_after=seconds(params, "latest_message_after"),
        latest_message_before=seconds(params, "latest_message_before"),
    )


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {ident[:64]} not found")


def attachments_of(message_id: str, view: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": str(a["index"]),
            "grant_id": None,
            "message_id": message_id,
            "filename": a["filename"] or f"attachment-{a['index']}",
            "content_type": a["content_type"],
            "size": a["size"],
            "content_id": a["content_id"],
            "is_inline": a["inline"],
        }
        for a in view["attachments"]
    ]


class Reading:
    def __init__(self, mailboxes: MailboxReader) -> None:
        self.mailboxes = mailboxes

    async def full(self, grant: Grant, m: MailboxMessage, obj: str = "message") -> dict[str, Any]:
        """The message with its body (HTML, else text) and attachments, from its bytes."""
        raw = await self.mailboxes.raw(grant, m.id)
        if raw is None:
            return message_json(m, obj=obj)
        try:
            view = await asyncio.to_thread(describe, raw)
        except ParseError:
            return message_json(m, obj=obj)
        parts = attachments_of(m.id, view)
        for p in parts:
            p["grant_id"] = grant.id
        return message_json(m, view["html"] or view["text"] or "", parts, obj)

    async def list_messages(self, grant: Grant, params: QueryParams) -> Response:
        found, token = await self.mailboxes.messages(grant, message_filter(params))
        return page([message_json(m) for m in found], token)

    async def get_message(self, grant: Grant, message_id: str) -> Response:
        m = await self.mailboxes.message(grant, message_id)
        if m is None:
            raise not_found("Message", message_id)
        return answer(await self.full(grant, m))

    async def update_message(self, grant: Grant, message_id: str, body: Any) -> Response:
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_field", "The body must be a JSON object", "body")
        changes: dict[str, Any] = {}
        for name in ("unread", "starred"):
            if name in body and body[name] is not None:
                if not isinstance(body[name], bool):
                    raise ApiError(400, "invalid_field", "must be true or false", name)
                changes[name] = body[name]
        if body.get("folders") is not None:
            folders = body["folders"]
            if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
                raise ApiError(400, "invalid_field", "must be a list of folder ids", "folders")
            if not folders:
                raise ApiError(400, "invalid_field", "a message must be in one folder", "folders")
            changes["folder_ids"] = folders
        unknown = set(body) - {"unread", "starred", "folders", "metadata"}
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError(400, "invalid_field", "cannot be changed by mailgate", name)
        return answer(message_json(await self.mailboxes.update(grant, message_id, **changes)))

    async def delete_message(self, grant: Grant, message_id: str) -> Response:
        await self.mailboxes.delete(grant, message_id)
        return deleted()

    async def list_threads(self, grant: Grant, params: QueryParams) -> Response:
        found, token = await self.mailboxes.threads(grant, thread_filter(params))
        return page([await self._thread(grant, t) for t in found], token)

    async def get_thread(self, grant: Grant, thread_id: str) -> Response:
        t = await self.mailboxes.thread(grant, thread_id)
        if t is None:
            raise not_found("Thread", thread_id)
        return answer(await self._thread(grant, t))

    async def _thread(self, grant: Grant, t: Thread) -> dict[str, Any]:
        latest = await self.mailboxes.message(grant, t.message_ids[-1]) if t.message_ids else None
        return thread_json(t, latest)

    async def list_folders(self, grant: Grant) -> Response:
        return page([folder_json(f) for f in await self.mailboxes.folders(grant)], None)

    async def get_folder(self, grant: Grant, folder_id: str) -> Response:
        for f in await self.mailboxes.folders(grant):
            if f.id == folder_id:
                return answer(folder_json(f))
        raise not_found("Folder", folder_id)

    async def find_attachment(
        self, grant: Grant, attachment_id: str, params: QueryParams
    ) -> Response:
        message_id = params.get("message_id")
        if not message_id:
            raise ApiError(400, "invalid_field", "required: the message's id", "message_id")
        m = await self.mailboxes.message(grant, message_id)
        if m is None:
            raise not_found("Message", message_id)
        for a in (await self.full(grant, m))["attachments"]:
            if a["id"] == attachment_id:
                return answer(a)
        raise not_found("Attachment", attachment_id)

    async def download(self, grant: Grant, attachment_id: str, params: QueryParams) -> Response:
        message_id = params.get("message_id")
        if not message_id:
            raise ApiError(400, "invalid_field", "required: the message's id", "message_id")
        raw = await self.mailboxes.raw(grant, message_id)
        if raw is None:
            raise not_found("Message", message_id)
        if not attachment_id.isdigit():
            raise not_found("Attachment", attachment_id)
        try:
            found = await asyncio.to_thread(attachment, raw, int(attachment_id))
        except ParseError:
            found = None
        if found is None:
            raise not_found("Attachment", attachment_id)
        filename, content_type, data = found
        name = (filename or f"attachment-{attachment_id}").replace('"', "")
        name = name.encode("ascii", "replace").decode().replace("\r", "").replace("\n", "")
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(data, 200, headers, media_type=content_type)
