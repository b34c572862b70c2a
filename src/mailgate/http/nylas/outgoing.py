"""Sending from a grant through Nylas v3, into mailgate's one door and durable queue:

    POST   /v3/grants/{g}/messages/send            a message (send_at: scheduled)
    GET    /v3/grants/{g}/messages/schedules       the grant's scheduled messages
    GET    /v3/grants/{g}/messages/schedules/{id}
    DELETE /v3/grants/{g}/messages/schedules/{id}  cancel it (what is not yet sent)
    POST   /v3/grants/{g}/drafts                   a draft, APPENDed to the Drafts folder
    GET    /v3/grants/{g}/drafts[/{id}]
    PUT    /v3/grants/{g}/drafts/{id}              a new version replaces it (new id)
    POST   /v3/grants/{g}/drafts/{id}              send it (then it leaves Drafts)
    DELETE /v3/grants/{g}/drafts/{id}

A send is a mailgate draft (compose.py) with From forced to the grant's address, In-Reply-
To and References built from the mailbox message `reply_to_message_id` names (its
References, then its Message-ID; "Re: " + its subject when none is given), and route
"(grant:<id>)": the door commits it like any message (Idempotency-Key too) and delivery
hands it to the grant's own submission server (mailboxes/submission.py), not to MX. The
answer's id is mailgate's message id (GET /v1/messages/{id} follows its delivery); once
delivered it is filed in the mailbox's Sent, where the sync gives it a mailbox id.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailgate.compose import Draft, compose
from mailgate.http import models as m
from mailgate.http.errors import ApiError
from mailgate.http.messages import visible_message
from mailgate.http.nylas.body import (
    bad,
    bracketed,
    read_json,
    send_request,
    sent_json,
    without_headers,
)
from mailgate.http.nylas.reading import MailboxReader, Reading, message_filter, not_found
from mailgate.http.nylas.shapes import answer, deleted, message_json, page, request_id
from mailgate.http.send import (
    JSON_TYPES,
    Send,
    client_of,
    draft_submission,
    raw_submission,
)
from mailgate.ingress.accept import Client, Submission
from mailgate.mailboxes.grants import GrantAdmin
from mailgate.mailboxes.models import FolderRole, Grant, MailboxMessage, MessageFilter
from mailgate.models import (
    GRANT_ROUTE,
    ApiKey,
    Message,
    NewMessage,
    RecipientStatus,
    Scope,
    new_id,
)
from mailgate.parsed import ParseError, describe
from mailgate.store import Store

DRAFT_FLAGS = ("\\Draft", "\\Seen")
SCHEDULES_MAX = 200


class Outgoing:
    def __init__(
        self, send: Send, store: Store, admin: GrantAdmin, mailboxes: MailboxReader | None
    ) -> None:
        self.send, self.store, self.admin, self.mailboxes = send, store, admin, mailboxes

    def _reader(self) -> MailboxReader:
        if self.mailboxes is None:
            raise ApiError(503, "unavailable", "Mailbox sync is not running in this process")
        return self.mailboxes

    # -- send -------------------------------------------------------------------------
    async def send_message(self, request: Request, grant_id: str) -> Response:
        key, body, idem, replay = await self.send.begin(request, JSON_TYPES, status=200)
        if replay is not None:
            return replay
        grant = await self.admin.visible(grant_id, key)
        fields = read_json(body)
        req = send_request(fields, grant)
        original = None
        if fields.get("reply_to_message_id") is not None:
            original = await self._original(grant, fields["reply_to_message_id"])
        submission = self._threaded(req, key, client_of(request), grant, original)
        prepared = await self._prepared(submission)
        data = sent_json(grant, req, prepared, original)
        text = json.dumps({"request_id": request_id(), "data": data})
        return await self.send.commit([prepared], text, idem, 200)

    async def _original(self, grant: Grant, message_id: Any) -> MailboxMessage:
        if not isinstance(message_id, str) or not message_id:
            raise bad("must be a message id of this grant", "reply_to_message_id")
        original = await self._reader().message(grant, message_id)
        if original is None:
            raise ApiError(
                404,
                "not_found",
                f"reply_to_message_id: no message {message_id[:64]} in this mailbox",
                "reply_to_message_id",
            )
        return original

    def _threaded(
        self,
        req: m.SendRequest,
        key: ApiKey,
        client: Client,
        grant: Grant,
        original: MailboxMessage | None,
    ) -> Submission:
        """The send as a submission on the grant's route, threaded under `original`."""
        if not (req.to or req.cc or req.bcc):
            raise bad("At least one of to, cc, bcc is required", "to")
        subject, in_reply_to, refs = req.subject, None, []
        if original is not None:
            parent = bracketed([original.message_id_header])
            refs = [r for r in bracketed(original.references) if r not in parent] + parent
            in_reply_to = parent[0] if parent else None
            if subject is None:
                base = original.subject or ""
                subject = base if base.lower().startswith("re:") else f"Re: {base}".rstrip()
        sub = draft_submission(req, key, client, subject, in_reply_to, tuple(refs[-20:]))
        return dataclasses.replace(sub, route=GRANT_ROUTE.format(grant.id))

    async def _prepared(self, submission: Submission) -> NewMessage:
        [prepared] = await self.send.prepare([submission])
        if isinstance(prepared, ApiError):
            raise prepared
        return prepared

    # -- schedules ----------------------------------------------------------------------
    async def schedules(self, key: ApiKey, grant_id: str) -> Response:
        grant = await self.admin.visible(grant_id, key)
        found = await self.store.grant_scheduled(grant.id, SCHEDULES_MAX)
        return page([await self._schedule(x) for x in found], None)

    async def schedule(self, key: ApiKey, grant_id: str, schedule_id: str) -> Response:
        message = await self._scheduled(key, grant_id, schedule_id)
        return answer(await self._schedule(message))

    async def cancel_schedule(self, key: ApiKey, grant_id: str, schedule_id: str) -> Response:
        message = await self._scheduled(key, grant_id, schedule_id)
        await self.store.cancel(message.id, time.time())
        state = await self._schedule(message)
        if state["status"]["code"] != "cancelled":
            raise ApiError(
                400,
                "invalid_field",
                f"Scheduled message {message.id} is already {state['status']['code']}",
                "schedule_id",
            )
        return answer({"message": "Scheduled message cancelled"})

    async def _scheduled(self, key: ApiKey, grant_id: str, schedule_id: str) -> Message:
        grant = await self.admin.visible(grant_id, key)
        if not schedule_id.isalnum() or len(schedule_id) != 26:
            raise not_found("Scheduled message", schedule_id)
        try:
            message = await visible_message(self.store, schedule_id, key)
        except ApiError:
            raise not_found("Scheduled message", schedule_id) from None
        routes = {r.domain for r in await self.store.recipients(message.id)}
        if routes != {GRANT_ROUTE.format(grant.id)} or message.scheduled_at is None:
            raise not_found("Scheduled message", schedule_id)
        return message

    async def _schedule(self, message: Message) -> dict[str, Any]:
        statuses = {r.status for r in await self.store.recipients(message.id)}
        waiting = {RecipientStatus.QUEUED, RecipientStatus.DEFERRED}
        if statuses & waiting:
            code, said = "pending", "scheduled, not yet sent"
        elif statuses == {RecipientStatus.CANCELLED}:
            code, said = "cancelled", "cancelled before it was sent"
        elif RecipientStatus.DELIVERED in statuses:
            code, said = "sucess", "sent"  # Nylas' own spelling of the code
        else:
            code, said = "failed", ", ".join(sorted(statuses))
        closed = None if code == "pending" else int(message.scheduled_at or message.created_at)
        return {
            "schedule_id": message.id,
            "status": {"code": code, "description": said},
            "close_time": closed,
        }

    # -- drafts -------------------------------------------------------------------------
    async def create_draft(self, key: ApiKey, grant: Grant, body: Any) -> Response:
        reader = self._reader()
        req = send_request(body, grant)
        original = None
        if isinstance(body, dict) and body.get("reply_to_message_id") is not None:
            original = await self._original(grant, body["reply_to_message_id"])
        draft = await self._filed_draft(key, grant, req, original)
        return answer(await Reading(reader).full(grant, draft, "draft"))

    async def _filed_draft(
        self, key: ApiKey, grant: Grant, req: m.SendRequest, original: MailboxMessage | None
    ) -> MailboxMessage:
        """The draft composed, APPENDed to Drafts, and found again once synced."""
        reader = self._reader()
        sub = self._threaded(req, key, Client("", "HTTP"), grant, original)
        assert isinstance(sub.content, Draft)
        now = time.time()
        token = new_token()
        message_id = f"<draft.{token}@{grant.email.rpartition('@')[2]}>"
        raw = compose(dataclasses.replace(sub.content, message_id=message_id, date=now))
        if req.bcc:  # kept in the draft so that sending it reaches them (dropped then)
            raw = f"Bcc: {', '.join(req.bcc)}\r\n".encode() + raw
        await reader.append(grant, FolderRole.DRAFTS, raw, DRAFT_FLAGS)
        # append syncs the folder before it returns: the draft is there by its Message-ID
        found, _ = await reader.messages(grant, MessageFilter(in_folder="drafts", limit=200))
        for x in found:
            if x.message_id_header == message_id:
                return x
        raise ApiError(503, "unavailable", "The draft was filed but the sync has not seen it yet")

    async def list_drafts(self, grant: Grant, params: Any) -> Response:
        query = dataclasses.replace(message_filter(params), in_folder="drafts")
        found, token = await self._reader().messages(grant, query)
        return page([{**draft_json(x)} for x in found], token)

    async def get_draft(self, grant: Grant, draft_id: str) -> Response:
        reader = self._reader()
        draft = await reader.message(grant, draft_id)
        if draft is None:
            raise not_found("Draft", draft_id)
        return answer(await Reading(reader).full(grant, draft, "draft"))

    async def update_draft(self, key: ApiKey, grant: Grant, draft_id: str, body: Any) -> Response:
        reader = self._reader()
        old = await reader.message(grant, draft_id)
        if old is None:
            raise not_found("Draft", draft_id)
        if not isinstance(body, dict):
            raise bad("The body must be a JSON object", "body")
        merged = {**(await self._draft_fields(grant, old)), **body}
        req = send_request(merged, grant)
        draft = await self._filed_draft(key, grant, req, None)
        await reader.delete(grant, old.id)
        return answer(await Reading(reader).full(grant, draft, "draft"))

    async def _draft_fields(self, grant: Grant, old: MailboxMessage) -> dict[str, Any]:
        """What a draft holds, as a Nylas body: an update changes only what it names."""
        raw = await self._reader().raw(grant, old.id) or b""
        try:
            view = describe(raw)
        except ParseError:
            view = {"html": None, "text": None}

        def ps(xs: Any) -> list[dict[str, str]]:
            return [{"name": p.name, "email": p.email} for p in xs]

        fields: dict[str, Any] = {
            "to": ps(old.to),
            "cc": ps(old.cc),
            "bcc": ps(old.bcc),
            "reply_to": ps(old.reply_to),
            "subject": old.subject,
        }
        if view["html"] is not None:
            fields["body"] = view["html"]
        elif view["text"] is not None:
            fields["body"], fields["is_plaintext"] = view["text"], True
        return fields

    async def send_draft(self, request: Request, grant_id: str, draft_id: str) -> Response:
        key = await self.send.auth.key_for(request, Scope.SEND)
        grant = await self.admin.visible(grant_id, key)
        reader = self._reader()
        draft = await reader.message(grant, draft_id)
        raw = await reader.raw(grant, draft_id) if draft is not None else None
        if draft is None or raw is None:
            raise not_found("Draft", draft_id)
        if not any(p.email.lower() == grant.email.lower() for p in draft.from_):
            raise bad(f"the draft's From is not the grant's address, {grant.email}", "from")
        recipients = [p.email for p in (*draft.to, *draft.cc, *draft.bcc)]
        if not recipients:
            raise bad("the draft has no recipient", "to")
        fresh = without_headers(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), (b"date",))
        sub = raw_submission(fresh, grant.email, recipients, key, client_of(request))
        prepared = await self._prepared(
            dataclasses.replace(sub, route=GRANT_ROUTE.format(grant.id))
        )
        data = {
            **draft_json(draft),
            "object": "message",
            "id": prepared.id,
            "date": int(prepared.created_at),
        }
        text = json.dumps({"request_id": request_id(), "data": data})
        response = await self.send.commit([prepared], text, None, 200)
        await reader.delete(grant, draft.id)  # sent: it leaves Drafts (to the Trash)
        return response

    async def delete_draft(self, grant: Grant, draft_id: str) -> Response:
        await self._reader().delete(grant, draft_id)
        return deleted()


def draft_json(x: MailboxMessage) -> dict[str, Any]:
    return message_json(x, obj="draft")


def new_token() -> str:
    return new_id().lower()
