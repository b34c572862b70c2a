"""Resend's email API on mailgate: the official `resend` SDK works unchanged once
`resend.api_url` points here (docs/vendors/resend.md).

    POST  /emails               one email           -> 200 {"id"}
    POST  /emails/batch         an array of emails  -> 200 {"data": [{"id"}, ...]}
                                (x-batch-validation: permissive adds "errors": [{index, message}])
    GET   /emails               a page, newest first -> {"object": "list", "has_more", "data"}
    GET   /emails/{id}          the email object, `last_event` from its recipients' states
    POST  /emails/{id}/cancel   cancel what is not yet delivered -> {"object": "email", "id"}
    PATCH /emails/{id}          405 method_not_allowed: mailgate does not reschedule
    any other /emails path      404 not_found / 405 method_not_allowed

Sends take `Idempotency-Key` (a repeat answers the first answer; another body, or a batch
in another x-batch-validation mode, with the same key is 409 invalid_idempotent_request).
Bodies are parsed by pydantic's JSON parser, which refuses a lone surrogate escape.
Every answer is JSON; errors are `{"statusCode", "name", "message"}`
(resend_shapes.error_body says which name, so the SDK raises the right exception class).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from email.policy import default
from typing import Any

import pydantic
import pydantic_core
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from mailgate.errors import StoreError
from mailgate.http import models as m
from mailgate.http.auth import secret_from
from mailgate.http.errors import ApiError, invalid
from mailgate.http.messages import utc, visible_message
from mailgate.http.send import JSON_TYPES, Send, client_of
from mailgate.http.vendors.resend_shapes import (
    email_fields,
    email_object,
    error_body,
    field_error,
    under,
)
from mailgate.ingress.accept import Client, Submission
from mailgate.models import (
    ApiKey,
    EventKind,
    Message,
    MessageQuery,
    NewMessage,
    RecipientStatus,
    Scope,
)
from mailgate.parsed import ParseError, describe
from mailgate.store import Store

log = logging.getLogger("mailgate.http")
Handler = Callable[[Request], Awaitable[Response]]
ID = re.compile(r"^[0-9A-Za-z]{1,64}$")  # longer or odder ids name no message: 404 at once
LIST_MAX = 100  # Resend's page limit
# the /emails paths that exist, for any other method: 405 rather than 404
KNOWN = re.compile(r"^/emails(/batch|/[^/]+(/cancel)?)?$")


class Resend:
    def __init__(self, send: Send, store: Store) -> None:
        self.send, self.store = send, store

    async def send_email(self, request: Request) -> Response:
        key, body, idem, replay = await self.send.begin(request, JSON_TYPES, status=200)
        if replay is not None:
            return replay
        submission = await self._submission(read_json(body), key, client_of(request))
        [prepared] = await self.send.prepare([submission])
        if isinstance(prepared, ApiError):
            raise prepared
        return await self.send.commit([prepared], json.dumps({"id": prepared.id}), idem, 200)

    async def send_batch(self, request: Request) -> Response:
        mode = request.headers.get("x-batch-validation")
        key, body, idem, replay = await self.send.begin(
            request, JSON_TYPES, status=200, variant=batch_variant(mode)
        )
        permissive = batch_mode(mode)
        if replay is not None:
            return replay
        items = read_json(body)
        if not isinstance(items, list) or not items:
            raise invalid("The body must be a non-empty JSON array of emails", None)
        if len(items) > self.send.cfg.batch_max:
            raise invalid(f"At most {self.send.cfg.batch_max} emails in a batch", None)
        client = client_of(request)
        drafts: list[Submission | ApiError] = []
        for item in items:
            try:
                drafts.append(await self._submission(item, key, client))
            except ApiError as err:
                drafts.append(err)
        prepared = [
            under(p, f"[{i}]") if isinstance(p, ApiError) else p
            for i, p in enumerate(await self.send.prepare(drafts))
        ]
        refused = [(i, p) for i, p in enumerate(prepared) if isinstance(p, ApiError)]
        if refused and not permissive:  # strict, Resend's default: all or nothing
            raise refused[0][1]
        accepted = [p for p in prepared if isinstance(p, NewMessage)]
        answer: dict[str, Any] = {"data": [{"id": p.id} for p in accepted]}
        if permissive:
            answer["errors"] = [
                {"index": i, "message": error_body(err, True)[1]["message"]} for i, err in refused
            ]
        if not accepted:  # nothing to store, so nothing to remember: a repeat answers the same
            return json_response(answer)
        return await self.send.commit(accepted, json.dumps(answer), idem, 200)

    async def get_email(self, request: Request) -> Response:
        key = await self.send.auth.key_for(request, Scope.READ)
        message = await self._message(request, key)
        return json_response(await self._email(message, with_bodies=True))

    async def list_emails(self, request: Request) -> Response:
        key = await self.send.auth.key_for(request, Scope.READ)
        limit, after = list_query(request)
        found = await self.store.list_messages(
            MessageQuery(
                cursor=after,
                limit=limit + 1,  # one more: whether there is a next page
                api_key_id=None if key.has(Scope.ADMIN) else key.id,
            )
        )
        data = [await self._email(x, with_bodies=False) for x in found[:limit]]
        return json_response({"object": "list", "has_more": len(found) > limit, "data": data})

    async def cancel_email(self, request: Request) -> Response:
        key = await self.send.auth.key_for(request, Scope.SEND)
        message = await self._message(request, key)
        if not await self.store.cancel(message.id, time.time()):
            statuses = {r.status for r in await self.store.recipients(message.id)}
            if RecipientStatus.CANCELLED not in statuses:  # a repeated cancel is fine
                raise ApiError(
                    422,
                    "invalid_field",
                    f"Email {message.id} cannot be canceled: every recipient is already"
                    f" {', '.join(sorted(statuses))}",
                )
        return json_response({"object": "email", "id": message.id})

    async def update_email(self, request: Request) -> Response:
        key = await self.send.auth.key_for(request, Scope.SEND)
        await self._message(request, key)
        raise ApiError(
            405,
            "method_not_allowed",
            "mailgate cannot reschedule an email: cancel it (POST /emails/{id}/cancel) and"
            " send it again with the new scheduled_at",
            headers={"Allow": "GET"},
        )

    async def _submission(self, item: Any, key: ApiKey, client: Client) -> Submission:
        """One Resend email as a submission (mailgate's model and draft rules apply)."""
        fields = email_fields(item)
        try:
            req = m.SendRequest.model_validate(fields)
        except pydantic.ValidationError as exc:
            raise field_error(exc) from None
        return await self.send.draft(req, key, client)

    async def _message(self, request: Request, key: ApiKey) -> Message:
        email_id = str(request.path_params.get("email_id", ""))
        if not ID.match(email_id):
            raise ApiError(404, "not_found", "Email not found")
        return await visible_message(self.store, email_id, key)

    async def _email(self, message: Message, with_bodies: bool) -> dict[str, Any]:
        recipients = await self.store.recipients(message.id)
        events = await self.store.events(message.id)
        raw = await self.store.get_raw(message.id)
        view = None
        if raw is not None:
            try:  # a big message takes a while to parse: not on the event loop
                view = await asyncio.to_thread(read_view, raw, with_bodies)
            except ParseError:
                view = None  # unreadable bytes: the email is shown from its envelope
        return email_object(
            message,
            recipients,
            view,
            complained=any(e.kind is EventKind.COMPLAINED for e in events),
            now=time.time(),
            created_at=utc(message.created_at).isoformat(),
            scheduled_at=utc(message.scheduled_at).isoformat() if message.scheduled_at else None,
        )


def router(send: Send, store: Store) -> APIRouter:
    resend = Resend(send, store)
    r = APIRouter(include_in_schema=False)
    for method, path, handler in (
        ("POST", "/emails", resend.send_email),
        ("GET", "/emails", resend.list_emails),
        ("POST", "/emails/batch", resend.send_batch),
        ("GET", "/emails/{email_id}", resend.get_email),
        ("PATCH", "/emails/{email_id}", resend.update_email),
        ("POST", "/emails/{email_id}/cancel", resend.cancel_email),
    ):
        r.add_api_route(path, answered(handler), methods=[method])
    every = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    for path in ("/emails", "/emails/{rest:path}"):  # after the routes: what they leave
        r.add_api_route(path, answered(no_route), methods=every)
    return r


async def no_route(request: Request) -> Response:
    if KNOWN.match(request.url.path):
        raise ApiError(405, "method_not_allowed", "Method is not allowed for the requested path")
    raise ApiError(404, "not_found", "The requested endpoint does not exist")


def answered(handler: Handler) -> Handler:
    """The handler with every error answered in Resend's shape, as JSON."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as err:
            return error_response(err, request)
        except StoreError:
            unavailable = ApiError(
                503, "unavailable", "Storage unavailable; retry later", headers={"Retry-After": "5"}
            )
            return error_response(unavailable, request)
        except Exception:  # a bug: say so in JSON, keep the details for the log
            log.exception("http: %s %s failed", request.method, request.url.path)
            return error_response(ApiError(500, "internal", "Internal error"), request)

    return run


def error_response(err: ApiError, request: Request) -> Response:
    key_given = secret_from(request.headers.get("authorization", "")) is not None
    status, body = error_body(err, key_given)
    headers = {k: v for k, v in err.headers.items() if status == 401 or k != "WWW-Authenticate"}
    return json_response(body, status, headers)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, media_type="application/json")


def read_json(body: bytes) -> Any:
    """The body as Python: pydantic's parser, as mailgate's own routes use, which refuses
    a lone surrogate escape ("\\ud800"; json.loads keeps it, and no UTF-8 can carry it)
    and nesting past its limit."""
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from None


def batch_mode(header: str | None) -> bool:
    """x-batch-validation: strict (the default) or permissive; True for permissive."""
    mode = (header or "strict").strip().lower()
    if mode not in ("strict", "permissive"):
        raise invalid("must be strict or permissive", "x-batch-validation")
    return mode == "permissive"


def batch_variant(header: str | None) -> str:
    """What Idempotency-Key adds to a batch's body: a permissive batch is another request
    than a strict one (and its answer another answer)."""
    mode = (header or "strict").strip().lower()
    return "" if mode == "strict" else f"x-batch-validation: {mode}"


def list_query(request: Request) -> tuple[int, str | None]:
    """(limit, after) of GET /emails; `before` is not offered (mailgate pages one way)."""
    params = request.query_params
    if "before" in params:
        raise invalid("mailgate pages newest first only: use `after`", "before")
    text = params.get("limit", "20")
    if not text.isdigit() or not 1 <= int(text) <= LIST_MAX:
        raise invalid(f"must be a whole number from 1 to {LIST_MAX}", "limit")
    after = params.get("after")
    if after is not None and not re.fullmatch(r"[0-9A-Z]{26}", after):
        raise invalid("must be the id of an email from the previous page", "after")
    return int(text), after


def read_view(raw: bytes, with_bodies: bool) -> dict[str, Any]:
    """What the email object shows of the stored bytes: the headers, and the text and
    HTML bodies unless only a list item is wanted (headers only: a page stays cheap)."""
    if with_bodies:
        return describe(raw)
    end = raw.find(b"\r\n\r\n")
    head = raw[: end + 4] if end >= 0 else raw  # the parser would decode the body too
    try:
        headers = BytesParser(policy=default).parsebytes(head, headersonly=True)
        return {
            name: str(headers[header]) if headers[header] is not None else None
            for name, header in (
                ("from", "from"),
                ("to", "to"),
                ("cc", "cc"),
                ("reply_to", "reply-to"),
                ("subject", "subject"),
            )
        }
    except Exception as exc:  # the parser's own errors are not one type
        raise ParseError(str(exc)) from exc
