"""Postmark's API on mailgate: POST /email, POST /email/batch and
GET /messages/outbound/{id}/details, served at the root (postmarker drops any path in
its root_api_url), with the key in X-Postmark-Server-Token.

Every answer is JSON: a send's five fields (To, SubmittedAt, MessageID, ErrorCode,
Message; 200), a batch's list of them (one per item, errors included; 200), or
{"ErrorCode", "Message"} with Postmark's status (postmark_request.ERROR_CODES). A
message whose every recipient is on the suppression list is answered with Postmark's
406 (inactive recipient) and not stored, as Postmark does not send it; with some
recipients left it is sent to those and the Message names the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
import pydantic_core
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailgate.errors import StoreError
from mailgate.http import models as m
from mailgate.http.errors import ApiError, invalid, unavailable
from mailgate.http.messages import visible_message
from mailgate.http.send import Send, client_of
from mailgate.http.vendors import postmark_request as pm
from mailgate.http.vendors.postmark_details import details
from mailgate.ingress.accept import Client, IdempotencyRequest, Submission
from mailgate.models import ApiKey, NewMessage, Scope
from mailgate.parsed import ParseError, describe
from mailgate.store import Store

log = logging.getLogger("mailgate.http")
JSON_TYPES = ("application/json",)
TOKEN = "x-postmark-server-token"
MESSAGE_ID = re.compile(r"^[0-9A-Z]{26}$")  # mailgate's ids; anything else is not found
YIELD_EVERY = 16  # batch items read between turns of the event loop
Handler = Callable[[Request], Awaitable[Response]]


class Postmark:
    def __init__(self, send: Send, store: Store) -> None:
        self.send, self.store = send, store

    async def email(self, request: Request) -> Response:
        key, body, idem, replay = await self._begin(request)
        if replay is not None:
            return replay
        try:  # the common case in one pass; a refusal is read again below, to name it
            email: pm.PostmarkEmail | ApiError = pm.PostmarkEmail.model_validate_json(body)
        except pydantic.ValidationError:
            data = load_json(body)
            if not isinstance(data, dict):
                raise invalid("the body must be a JSON object: one message", None) from None
            email = parse_email(data)
        [prepared] = await self.send.prepare(
            [await self._submission(email, key, client_of(request))]
        )
        prepared = unless_inactive(prepared)
        if isinstance(prepared, ApiError):
            raise prepared
        assert isinstance(email, pm.PostmarkEmail)  # a refusal was raised just above
        answer = accepted(email.to or "", prepared)
        return await self.send.commit([prepared], json.dumps(answer), idem, status=200)

    async def batch(self, request: Request) -> Response:
        key, body, idem, replay = await self._begin(request)
        if replay is not None:
            return replay
        data = load_json(body)
        if not isinstance(data, list):
            raise invalid("the body must be a JSON array of messages", None)
        if len(data) > self.send.cfg.batch_max:
            limit = self.send.cfg.batch_max
            raise ApiError(422, "too_many_batch_messages", f"at most {limit} messages a batch")
        client = client_of(request)
        items: list[Submission | ApiError] = []
        for i, item in enumerate(data):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if not isinstance(item, dict):
                items.append(invalid("each batch item must be a JSON object", None))
            else:
                items.append(await self._submission(parse_email(item), key, client))
        results: list[dict[str, Any]] = []
        commit: list[NewMessage] = []
        now = time.time()
        for item, one in zip(data, await self.send.prepare(items), strict=True):
            prepared = unless_inactive(one)
            if isinstance(prepared, ApiError):
                results.append(pm.item_error(pm.to_text(item), now, prepared))
                continue
            commit.append(prepared)
            results.append(accepted(pm.to_text(item), prepared))
        answer = json.dumps(results)
        if not commit:  # nothing to store: Postmark answers 200 with every item's error
            return Response(answer, media_type="application/json")
        return await self.send.commit(commit, answer, idem, status=200)

    async def message_details(self, request: Request) -> Response:
        token = token_of(request)
        try:
            key = await self.send.auth.key_for(request, Scope.READ, token)
        except ApiError as err:
            raise missing_token(err, token) from None
        message_id = request.path_params["message_id"]
        if not MESSAGE_ID.match(message_id):
            raise ApiError(404, "not_found", f"No message {message_id[:100]}")
        message = await visible_message(self.store, message_id, key)
        recipients = await self.store.recipients(message.id)
        events = await self.store.events(message.id)
        raw = await self.store.get_raw(message.id)
        view = None
        with contextlib.suppress(ParseError):  # unparseable: answered without its parts
            if raw is not None:  # a big message takes a while to parse: not on the loop
                view = await asyncio.to_thread(describe, raw)
        return JSONResponse(details(message, recipients, events, view, time.time()))

    async def _begin(
        self, request: Request
    ) -> tuple[ApiKey, bytes, IdempotencyRequest | None, Response | None]:
        """Send.begin with the key from X-Postmark-Server-Token (and the draining check
        first, as everywhere: 503 while draining, then 401 without a token)."""
        token = token_of(request)
        try:
            return await self.send.begin(request, JSON_TYPES, token, status=200)
        except ApiError as err:
            raise missing_token(err, token) from None

    async def _submission(
        self, email: pm.PostmarkEmail | ApiError, key: ApiKey, client: Client
    ) -> Submission | ApiError:
        """One Postmark message as a submission, or why it cannot be one (named in
        Postmark's fields)."""
        if isinstance(email, ApiError):
            return email
        problem = pm.unsupported(email)
        if problem is not None:
            return problem
        fields = pm.send_fields(email)
        try:
            req = m.SendRequest.model_validate(fields)
        except pydantic.ValidationError as exc:
            return pm.mailgate_error(exc, fields)
        try:
            return await self.send.draft(req, key, client)
        except ApiError as err:
            return err


def parse_email(item: dict[str, Any]) -> pm.PostmarkEmail | ApiError:
    """One message of the body in Postmark's shape, or its first refused field."""
    try:
        return pm.PostmarkEmail.model_validate(item)
    except pydantic.ValidationError as exc:
        return pm.postmark_error(exc)


def unless_inactive(prepared: NewMessage | ApiError) -> NewMessage | ApiError:
    """Postmark does not send a message whose every recipient is inactive: its 406."""
    if isinstance(prepared, NewMessage) and set(prepared.suppressed) == set(prepared.recipients):
        return pm.inactive_error(prepared.suppressed)
    return prepared


def accepted(to: str, message: NewMessage) -> dict[str, Any]:
    return pm.item_answer(to, message.created_at, message.id, 0, pm.ok_message(message.suppressed))


def token_of(request: Request) -> str:
    """The Postmark server token; "" when absent (never Authorization's: these routes
    take the key where Postmark's SDKs put it), which Auth answers 401 once it has
    answered 503 while draining."""
    return request.headers.get(TOKEN, "").strip()


def missing_token(err: ApiError, token: str) -> ApiError:
    """Auth's 401 for no key, told where Postmark's key goes."""
    if err.status == 401 and not token:
        return ApiError(
            401, "unauthorized", "Missing API key: send it in the X-Postmark-Server-Token header"
        )
    return err


def load_json(body: bytes) -> Any:
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:  # not JSON, not UTF-8, or nested past the parser's limit
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def answered(handler: Handler) -> Handler:
    """The handler with every error in Postmark's shape: JSON, Postmark's ErrorCode and
    status, Retry-After kept; never mailgate's own error shape or a bare 500."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except StoreError:  # the store cannot read or commit now
            return error_response(unavailable())
        except Exception:  # a bug: say so in Postmark's JSON, keep the details for the log
            log.exception("postmark: %s %s failed", request.method, request.url.path)
            return error_response(ApiError(500, "internal", "Internal error"))

    return answer


def error_response(e: ApiError) -> Response:
    """Postmark's error as ASCII JSON: whatever its message quotes, it can be written."""
    retry = {"Retry-After": e.headers["Retry-After"]} if "Retry-After" in e.headers else None
    body = json.dumps(pm.error_body(e))
    return Response(body, pm.postmark_codes(e)[0], retry, media_type="application/json")


def router(send: Send, store: Store) -> APIRouter:
    postmark = Postmark(send, store)
    r = APIRouter(include_in_schema=False)  # documented in docs/vendors/postmark.md
    r.add_api_route("/email", answered(postmark.email), methods=["POST"])
    r.add_api_route("/email/batch", answered(postmark.batch), methods=["POST"])
    r.add_api_route(
        "/messages/outbound/{message_id}/details",
        answered(postmark.message_details),
        methods=["GET"],
    )
    return r
