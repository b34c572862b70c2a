"""SendGrid's v3 API on mailgate, so the official SDK works unchanged with
`SendGridAPIClient(api_key, host="http://mailgate:8025")` (docs/vendors/sendgrid.md).

    POST /v3/mail/send              each personalization one message, committed all or none
    POST /v3/mail/batch             a new batch id (send_at with batch_id, then cancel)
    GET  /v3/mail/batch/{batch_id}  the batch id, checked
    POST /v3/user/scheduled_sends   {"batch_id", "status": "cancel"}: cancel its messages
    GET  /v3/messages/{msg_id}      Email Activity's view of a message (sendgrid_read.py)

A send is answered 202 with an empty body and `X-Message-Id`: the first
personalization's message id; `X-Mailgate-Message-Ids` lists the first 50
personalizations' messages, in order, and `X-Mailgate-Message-Count` counts them all.
Errors are SendGrid's {"errors": [{"message", "field", "help"}]}, the field in SendGrid's
names, every refused field listed; a bug is a logged 500 in the same shape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal, ParamSpec

import pydantic
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from mailgate.errors import StoreError
from mailgate.http import models as m
from mailgate.http.errors import ApiError, unavailable
from mailgate.http.messages import visible_message
from mailgate.http.send import Send, client_of, read_body
from mailgate.http.vendors.sendgrid_body import (
    BATCH_TAG,
    Refused,
    SgMail,
    address_problems,
    bodies,
    door_field,
    model_problems,
    multiplied_size,
    parse,
    problem,
    request_fields,
    sandboxed,
    shape_problems,
    shared_addresses,
    shared_fields,
    unsupported,
)
from mailgate.http.vendors.sendgrid_plain import plain_fields
from mailgate.http.vendors.sendgrid_read import activity
from mailgate.ingress.accept import Client, Submission
from mailgate.models import ApiKey, MessageQuery, NewMessage, Scope
from mailgate.store import Store

log = logging.getLogger("mailgate.http")
JSON_TYPES = ("application/json",)
MESSAGE_IDS = "X-Mailgate-Message-Ids"  # the personalizations' message ids, in order
MESSAGE_COUNT = "X-Mailgate-Message-Count"  # how many messages the request made
# ids in MESSAGE_IDS at most: 500 of them are 14 KB, past the 4-8 KB of response headers
# proxies buffer (nginx answers 502 after the commit); 50 are 1.4 KB
MESSAGE_IDS_MAX = 50
BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ERRORS = 20  # refusals listed in one answer
YIELD_EVERY = 16  # personalizations translated between turns of the event loop
CANCEL_PAGE = 500
P = ParamSpec("P")


def errors_answer(errors: list[ApiError]) -> Response:
    """SendGrid's error body; the status of the first error (mailgate's 422 is SendGrid's
    400), with its headers (Retry-After, WWW-Authenticate)."""
    first = errors[0]
    status = 400 if first.status == 422 else first.status
    body = {"errors": [{"message": e.message, "field": e.field, "help": None} for e in errors]}
    # ASCII JSON: whatever a message quotes, it can be written
    return Response(json.dumps(body), status, first.headers, media_type="application/json")


def answered(
    handler: Callable[P, Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """Every refusal of the handler in SendGrid's error shape, never mailgate's."""

    @functools.wraps(handler)
    async def run(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except Refused as refused:  # before ApiError: it is one
            return errors_answer(refused.errors)
        except ApiError as err:
            return errors_answer([err])
        except StoreError:  # the store could not read or commit: retry later
            return errors_answer([unavailable()])
        except Exception:  # a bug: say so in SendGrid's JSON, keep the details for the log
            log.exception("sendgrid: %s failed", handler.__name__)
            return errors_answer([ApiError(500, "internal", "Internal error")])

    return run


def replayed_answer(stored: bytes | memoryview) -> Response:
    """The answer to an idempotent repeat; `stored` is what the commit recorded:
    {"ids", "status"}."""
    record = json.loads(bytes(stored))
    return accepted(record["ids"], record["status"], replayed=True)


def accepted(ids: list[str], status: int, replayed: bool = False) -> Response:
    """The answer to a committed send: no body, the ids in headers."""
    headers = {
        "X-Message-Id": ids[0],
        MESSAGE_IDS: ", ".join(ids[:MESSAGE_IDS_MAX]),
        MESSAGE_COUNT: str(len(ids)),
    }
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(status_code=status, headers=headers)


def unique(errors: list[ApiError]) -> list[ApiError]:
    """One error per (field, message): a shared field refused once, not per message."""
    seen: dict[tuple[str | None, str], ApiError] = {}
    for e in errors:
        seen.setdefault((e.field, e.message), e)
    return list(seen.values())[:MAX_ERRORS]


class ScheduledSend(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    batch_id: str = pydantic.Field(pattern=BATCH_ID.pattern)
    status: Literal["cancel", "pause"]


class SendGrid:
    def __init__(self, send: Send, store: Store) -> None:
        self.send, self.store = send, store

    @answered
    async def mail_send(self, request: Request) -> Response:
        key, body, idem, replay = await self.send.begin(request, JSON_TYPES)
        if request.headers.get("on-behalf-of"):  # before a replay: it changes the request
            raise problem("mailgate has no subusers: use that account's own key", "On-Behalf-Of")
        if replay is not None:
            return replayed_answer(replay.body)
        mail: SgMail | None = None
        client = client_of(request)
        items = await self._plain(body, key, client)
        if items is None:
            mail = parse(body)
            self._check_size(mail)
            text, wrong = bodies(mail)
            refused = unsupported(mail) + wrong + address_problems(shared_addresses(mail))
            if refused:
                raise Refused(unique(refused))
            items = await self._submissions(mail, text, key, client)
        prepared = await self.send.prepare(items)
        if any(isinstance(e, ApiError) for e in prepared):
            mail = mail or parse(body)  # the refusals' fields in SendGrid's names
            refusals = [
                problem_at(e, mail, n) for n, e in enumerate(prepared) if isinstance(e, ApiError)
            ]  # all or nothing: one refused personalization refuses the request
            raise Refused(unique(refusals))
        messages = [p for p in prepared if isinstance(p, NewMessage)]
        # SendGrid's sandbox answers 200 (a plain send has no mail_settings)
        status = 200 if mail is not None and sandboxed(mail) else 202
        ids = [x.id for x in messages]
        stored = json.dumps({"ids": ids, "status": status})
        replayed = await self.send.commit_only(messages, stored, idem, status)
        if replayed is not None:  # a repeat of this request committed first: its answer
            return replayed_answer(replayed.body)
        return accepted(ids, status)

    async def _plain(self, body: bytes, key: ApiKey, client: Client) -> list[Submission] | None:
        """A plain send's one submission, its request validated once (sendgrid_plain.py);
        None: read the request the long way, which names a refused field in SendGrid's
        words."""
        fields = plain_fields(body, self.send.cfg.max_recipients)
        if fields is None:
            return None
        try:
            req = m.SendRequest.model_validate(fields)
        except pydantic.ValidationError:
            return None
        try:
            return [await self.send.draft(req, key, client)]
        except ApiError as err:
            raise Refused([problem_at(err, parse(body), 0)]) from None

    def _check_size(self, mail: SgMail) -> None:
        """http.batch_max personalizations; accept.max_recipients addresses each, as
        given (the door's cap on the envelope, checked here before any address is parsed);
        and the copies of the shared fields within http.max_body_bytes."""
        cfg = self.send.cfg
        if len(mail.personalizations) > cfg.batch_max:
            raise problem(
                f"At most {cfg.batch_max} personalizations a request (http.batch_max)",
                "personalizations",
            )
        for n, p in enumerate(mail.personalizations):
            if len(p.to) + len(p.cc) + len(p.bcc) > cfg.max_recipients:
                raise problem(
                    f"At most {cfg.max_recipients} recipients a personalization"
                    " (accept.max_recipients)",
                    f"personalizations.{n}.to",
                )
        # one personalization: one copy of each field, each no longer than its place in
        # the body, which read_body held to max_body_bytes
        if len(mail.personalizations) > 1 and multiplied_size(mail) > cfg.max_body_bytes:
            raise ApiError(
                413,
                "too_large",
                "Content, attachments, headers and the other shared fields, copied into each"
                f" personalization's message, come to over {cfg.max_body_bytes} bytes: send"
                " fewer personalizations a request",
                "personalizations",
            )

    async def _submissions(
        self, mail: SgMail, text: dict[str, str], key: ApiKey, client: Client
    ) -> list[Submission]:
        """Each personalization as a submission with its draft, or every field refused;
        `text`: the content as text and html."""
        shared = shared_fields(mail, text)
        sandbox = sandboxed(mail)
        found: list[Submission] = []
        errors: list[ApiError] = []
        for n in range(len(mail.personalizations)):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            fields, wrong = request_fields(mail, n, shared)
            if wrong:
                errors += wrong
                continue
            try:
                req = m.SendRequest.model_validate(fields)
                sub = await self.send.draft(req, key, client)
            except pydantic.ValidationError as exc:
                errors += model_problems(exc, mail, n)
                continue
            except ApiError as err:
                errors.append(problem_at(err, mail, n))
                continue
            found.append(dataclasses.replace(sub, sandbox=True) if sandbox else sub)
        if errors:
            raise Refused(unique(errors))
        return found

    @answered
    async def create_batch(self, request: Request) -> Response:
        await self.send.auth.key_for(request, Scope.SEND)
        return JSONResponse({"batch_id": secrets.token_urlsafe(24)}, status_code=201)

    @answered
    async def get_batch(self, request: Request, batch_id: str) -> Response:
        await self.send.auth.key_for(request, Scope.SEND)
        if not BATCH_ID.match(batch_id):
            raise ApiError(400, "invalid_field", "invalid batch id", "batch_id")
        return JSONResponse({"batch_id": batch_id})

    @answered
    async def scheduled_sends(self, request: Request) -> Response:
        """Cancel every message of the key sent with this batch_id (its recipients not yet
        delivered). Pausing is not supported."""
        key = await self.send.auth.key_for(request, Scope.SEND)
        body, _ = await read_body(request, JSON_TYPES, self.send.cfg.max_body_bytes)
        try:
            req = ScheduledSend.model_validate_json(body)
        except pydantic.ValidationError as exc:
            raise Refused(shape_problems(exc)) from None
        if req.status == "pause":
            raise problem("mailgate cannot pause a scheduled send; cancel it instead", "status")
        await self._cancel_tagged(key, BATCH_TAG + req.batch_id)
        return JSONResponse({"batch_id": req.batch_id, "status": "cancel"}, status_code=201)

    async def _cancel_tagged(self, key: ApiKey, tag: str) -> None:
        owner = None if key.has(Scope.ADMIN) else key.id
        cursor = None
        while True:
            page = await self.store.list_messages(
                MessageQuery(tag=tag, api_key_id=owner, cursor=cursor, limit=CANCEL_PAGE)
            )
            for message in page:
                await self.store.cancel(message.id, time.time())
            if len(page) < CANCEL_PAGE:
                return
            cursor = page[-1].id

    @answered
    async def message(self, request: Request, msg_id: str) -> Response:
        key = await self.send.auth.key_for(request, Scope.READ)
        found = await visible_message(self.store, msg_id, key, "msg_id")
        recipients = await self.store.recipients(found.id)
        events = await self.store.events(found.id)
        return JSONResponse(activity(found, recipients, events))


def problem_at(err: ApiError, mail: SgMail, n: int) -> ApiError:
    """A refusal of personalization n's message, its field in SendGrid's names."""
    if err.status >= 500:
        return err
    status = 400 if err.status == 422 else err.status
    return ApiError(status, err.code, err.message, door_field(err.field, mail, n), err.headers)


def router(send: Send, store: Store) -> APIRouter:
    sg = SendGrid(send, store)
    r = APIRouter(include_in_schema=False)
    r.add_api_route("/v3/mail/send", sg.mail_send, methods=["POST"])
    r.add_api_route("/v3/mail/batch", sg.create_batch, methods=["POST"])
    r.add_api_route("/v3/mail/batch/{batch_id}", sg.get_batch, methods=["GET"])
    r.add_api_route("/v3/user/scheduled_sends", sg.scheduled_sends, methods=["POST"])
    r.add_api_route("/v3/messages/{msg_id}", sg.message, methods=["GET"])
    # another method on a fixed path: SendGrid's 405 (the paths with a parameter are left
    # alone: /v3/{domain}/messages is Mailgun's)
    for path, allow in (
        ("/v3/mail/send", "POST"),
        ("/v3/mail/batch", "POST"),
        ("/v3/user/scheduled_sends", "POST"),
    ):
        others = [x for x in ("GET", "POST", "PUT", "PATCH", "DELETE") if x != allow]
        r.add_api_route(path, not_allowed(allow), methods=others)
    return r


def not_allowed(allow: str) -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request) -> Response:
        error = ApiError(405, "method_not_allowed", "Method not allowed", None, {"Allow": allow})
        return errors_answer([error])

    return answer
