"""The send routes (single, batch, raw): each request as a Submission for the one door,
and the door's answer as the 202 (or the error naming the field).

Order of checks on every send: API key (401), scope (403), rate (429), content type (415),
size (413), idempotency (replay or 409), JSON (400), fields (422), then the door; the
202 is sent only after the door committed.

Each handler reads the body itself and validates it with `model_validate_json`
(pydantic's Rust parser): one pass, JSON errors (400) told apart from field errors (422).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from email.utils import getaddresses
from typing import Any, TypeVar

import pydantic
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from mailgate.addresses import address_problem, parse_mailbox
from mailgate.compose import Attachment as DraftAttachment
from mailgate.compose import Draft
from mailgate.config import HttpConfig
from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.errors import ApiError, invalid, refusal_error, validation_error
from mailgate.http.idempotency import Idempotency
from mailgate.http.messages import utc, visible_message
from mailgate.http.openapi import ERRORS, request_body
from mailgate.ingress.accept import Client, Door, IdempotencyRequest, Refusal, Submission
from mailgate.ingress.smtp_rules import HeaderField, header_fields
from mailgate.models import ApiKey, NewMessage, Scope, Source
from mailgate.store import Store

JSON_TYPES = ("application/json",)
RAW_TYPES = ("application/json", "message/rfc822")
# Headers a raw submission loses: hidden recipients must not reach the visible ones.
DROPPED = frozenset({"bcc", "resent-bcc"})
T = TypeVar("T", bound=pydantic.BaseModel)


YIELD_EVERY = 16  # batch items prepared between turns of the event loop


class Send:
    def __init__(
        self, auth: Auth, idempotency: Idempotency, door: Door, store: Store, cfg: HttpConfig
    ) -> None:
        self.auth, self.idempotency, self.door, self.store = auth, idempotency, door, store
        self.cfg = cfg

    async def send(self, request: Request) -> Response:
        key, body, idem, replay = await self.begin(request, JSON_TYPES)
        if replay is not None:
            return replay
        req = parse_json(m.SendRequest, body)
        submission = await self.draft(req, key, client_of(request))
        return await self._commit_one(submission, idem)

    async def batch(self, request: Request) -> Response:
        key, body, idem, replay = await self.begin(request, JSON_TYPES)
        if replay is not None:
            return replay
        items = batch_items(body)
        if len(items) > self.cfg.batch_max:
            raise invalid(f"At most {self.cfg.batch_max} messages", "messages")
        results: list[dict[str, Any]] = []
        prepared: list[NewMessage] = []
        client = client_of(request)
        for i, item in enumerate(items):
            if i % YIELD_EVERY == YIELD_EVERY - 1:  # signing is ~0.3 ms a message: let the
                await asyncio.sleep(0)  # other connections in between, not after the batch
            message = await self._batch_item(i, item, key, client)
            if isinstance(message, ApiError):
                results.append({"index": i, "error": message.item()})
                continue
            prepared.append(message)
            results.append({"index": i})
        if not prepared:
            error = {
                "code": "invalid_batch",
                "message": "No message in the batch is valid",
                "field": results[0]["error"]["field"],
            }
            return JSONResponse(
                {"error": error, "accepted": 0, "rejected": len(results), "results": results},
                status_code=422,
            )
        accepted = await self._screen(prepared)  # one suppression lookup for the batch
        quoted = iter(accepted)
        for result in results:
            if "error" not in result:
                result.update(accepted_dict(next(quoted)))
        counts = {"accepted": len(accepted), "rejected": len(results) - len(accepted)}
        return await self._commit(accepted, json.dumps({**counts, "results": results}), idem)

    async def send_raw(self, request: Request) -> Response:
        key, body, idem, replay = await self.begin(request, RAW_TYPES)
        if replay is not None:
            return replay
        if request.headers.get("content-type", "").startswith("message/rfc822"):
            params = request.query_params
            envelope = {
                "raw": base64.b64encode(body).decode(),
                "from": params.get("from", ""),
                "to": params.getlist("to"),
            }
            req = parse_json(m.RawRequest, json.dumps(envelope).encode())
        else:
            req = parse_json(m.RawRequest, body)
        to = [address for _, address in map(mailbox, req.to)]  # addr-specs, never as given
        submission = raw_submission(
            base64.b64decode(req.raw), req.from_, to, key, client_of(request), tuple(req.tags)
        )
        return await self._commit_one(submission, idem)

    async def begin(
        self,
        request: Request,
        types: tuple[str, ...],
        secret: str | None = None,
        status: int = 202,
        variant: str = "",
    ) -> tuple[ApiKey, bytes, IdempotencyRequest | None, Response | None]:
        """Key (send scope), body, what idempotency records and a replay if there is one
        (answered with `status`); `variant`: a header that changes the request's meaning,
        so that a repeat with another one is not answered the first answer."""
        key = await self.auth.key_for(request, Scope.SEND, secret)
        body, media_type = await read_body(request, types, self.cfg.max_body_bytes)
        idem, replay = await self.idempotency.begin(request, key, body, media_type, status, variant)
        return key, body, idem, replay

    # -- the seam for the vendor surfaces (http/vendors/): their request as submissions,
    # the door's answer in their words, committed with the body they answer

    async def prepare(self, items: Sequence[Submission | ApiError]) -> list[NewMessage | ApiError]:
        """Each submission through every rule but the commit (a refusal as the ApiError
        mailgate would answer), the accepted ones screened against the suppression list
        in one lookup; in the order given."""
        prepared: list[NewMessage | ApiError] = []
        for i, item in enumerate(items):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if isinstance(item, ApiError):
                prepared.append(item)
                continue
            message = self.door.prepare(item)
            prepared.append(
                refusal_error(message, raw=isinstance(item.content, bytes))
                if isinstance(message, Refusal)
                else message
            )
        screened = iter(await self._screen([p for p in prepared if isinstance(p, NewMessage)]))
        return [p if isinstance(p, ApiError) else next(screened) for p in prepared]

    async def commit(
        self,
        messages: list[NewMessage],
        body: str,
        idem: IdempotencyRequest | None,
        status: int = 202,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Commit the messages (and the idempotency record answering `body`); the answer
        only once they are on disk."""
        replayed = await self.commit_only(messages, body, idem, status)
        if replayed is not None:
            return replayed
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def commit_only(
        self,
        messages: list[NewMessage],
        body: str,
        idem: IdempotencyRequest | None,
        status: int = 202,
    ) -> Response | None:
        """`commit` for a surface that answers in its own shape: None once the messages
        are on disk, or the first answer when a repeat of the request committed first."""
        answer = await self.door.commit(messages, idem, body)
        if isinstance(answer, Refusal):
            raise refusal_error(answer)
        if answer.replayed and idem is not None:
            return await self.idempotency.replay(idem, status)
        return None

    async def _batch_item(
        self, i: int, item: m.SendRequest | dict[str, Any], key: ApiKey, client: Client
    ) -> NewMessage | ApiError:
        """One batch item through every rule but the commit, or why it was refused."""
        prefix = f"messages[{i}]"
        try:
            one = item if isinstance(item, m.SendRequest) else m.SendRequest.model_validate(item)
            submission = await self.draft(one, key, client, prefix)
        except pydantic.ValidationError as exc:
            return validation_error(exc, prefix)
        except ApiError as err:
            return err
        message = self.door.prepare(submission)
        if isinstance(message, Refusal):
            return refusal_error(message, prefix=prefix)
        return message

    async def _commit_one(self, sub: Submission, idem: IdempotencyRequest | None) -> Response:
        """The door for one message; the 202 quotes the prepared message."""
        message = self.door.prepare(sub)
        if isinstance(message, Refusal):
            raise refusal_error(message, raw=isinstance(sub.content, bytes))
        [screened] = await self._screen([message])
        return await self._commit([screened], json.dumps(accepted_dict(screened)), idem)

    async def _screen(self, messages: list[NewMessage]) -> list[NewMessage]:
        """The door's suppression screen: the 202 names each suppressed recipient."""
        screened = await self.door.screen(messages)
        if isinstance(screened, Refusal):
            raise refusal_error(screened)
        return screened

    async def _commit(
        self, messages: list[NewMessage], body: str, idem: IdempotencyRequest | None
    ) -> Response:
        return await self.commit(messages, body, idem)

    async def draft(
        self, req: m.SendRequest, key: ApiKey, client: Client, prefix: str = ""
    ) -> Submission:
        """The JSON request as a submission with a draft; the door composes it."""

        def at(name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        if not (req.to or req.cc or req.bcc):
            raise invalid("At least one of to, cc, bcc is required", at("to"))
        if req.text is None and req.html is None:
            raise invalid("Give text, html or both", at("text"))
        subject, in_reply_to = req.subject, None
        references: tuple[str, ...] = ()
        if req.reply_to_message_id is not None:
            subject, in_reply_to, references = await self._thread(
                req, key, at("reply_to_message_id")
            )
        return draft_submission(req, key, client, subject, in_reply_to, references)

    async def _thread(
        self, req: m.SendRequest, key: ApiKey, field: str
    ) -> tuple[str | None, str | None, tuple[str, ...]]:
        """(Subject, In-Reply-To, References) of a reply to a stored message."""
        assert req.reply_to_message_id is not None
        original = await visible_message(self.store, req.reply_to_message_id, key, field)
        raw = await self.store.get_raw(original.id) or b""
        refs = header_value(raw, b"references").split()
        parent = original.message_id_header
        if parent:
            refs = [r for r in refs if r != parent] + [parent]
        subject = req.subject
        if subject is None:
            base = original.subject or ""
            subject = base if base.lower().startswith("re:") else f"Re: {base}".rstrip()
        return subject, parent, tuple(refs[-20:])


def router(send: Send) -> APIRouter:
    r = APIRouter()
    for path, endpoint, body, answer, summary in (
        ("/v1/messages", send.send, m.SendRequest, m.Accepted, "Send one message"),
        (
            "/v1/messages/batch",
            send.batch,
            m.BatchRequest,
            m.BatchResult,
            "Send up to 500 messages",
        ),
        (
            "/v1/messages/raw",
            send.send_raw,
            m.RawRequest,
            m.Accepted,
            "Send a complete RFC 5322 message (JSON, or message/rfc822 with ?from=&to=)",
        ),
    ):
        r.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            status_code=202,
            response_model=answer,
            responses=ERRORS,
            openapi_extra=request_body(body),
            summary=summary,
        )
    return r


async def read_body(request: Request, types: tuple[str, ...], max_bytes: int) -> tuple[bytes, str]:
    """(The whole body, its media type); 415 for another type, 413 past max_bytes."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in types:
        raise ApiError(415, "unsupported_media_type", f"Content-Type must be {' or '.join(types)}")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, "too_large", f"Body over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, "too_large", f"Body over {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-body: nothing to answer
        raise ApiError(400, "client_disconnected", "The client closed the request") from None
    return b"".join(chunks), media_type


def batch_items(body: bytes) -> Sequence[m.SendRequest | dict[str, Any]]:
    """A batch's items: validated in one pass when all are valid (the usual case; about
    9% of a batch's CPU less than one by one), else as JSON objects, each then validated
    on its own to say which item and which field."""
    try:
        return m.ValidBatch.model_validate_json(body).messages
    except pydantic.ValidationError:
        return parse_json(m.BatchRequest, body).messages


def parse_json(model: type[T], body: bytes) -> T:
    """The request model, or ApiError 400 (not JSON) / 422 (naming the field)."""
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def client_of(request: Request) -> Client:
    """The Received facts of an HTTP request: the peer's address and the protocol."""
    return Client(request.client.host if request.client else "unknown", "HTTP")


def draft_submission(
    req: m.SendRequest,
    key: ApiKey,
    client: Client,
    subject: str | None,
    in_reply_to: str | None,
    references: tuple[str, ...],
) -> Submission:
    sender = mailbox(req.from_)
    to, cc = tuple(map(mailbox, req.to)), tuple(map(mailbox, req.cc))
    draft = Draft(  # Message-ID and Date: the door's, with the stored id
        sender=sender,
        to=to,
        cc=cc,
        reply_to=tuple(map(mailbox, req.reply_to)),
        subject=subject,
        text=req.text,
        html=req.html,
        attachments=tuple(
            DraftAttachment(a.filename, a.decoded(), a.content_type, a.content_id, a.is_inline)
            for a in req.attachments
        ),
        headers=tuple(req.headers.items()),
        in_reply_to=in_reply_to,
        references=references,
    )
    bcc = map(mailbox, req.bcc)
    envelope = tuple(dict.fromkeys(address for _, address in (*to, *cc, *bcc)))
    return Submission(
        sender=sender[1],
        recipients=envelope,
        content=draft,
        source=Source.HTTP,
        client=client,
        key=key,
        tags=tuple(req.tags),
        metadata=dict(req.metadata),
        scheduled_at=req.scheduled_at.timestamp() if req.scheduled_at else None,
    )


def raw_submission(
    raw: bytes,
    sender: str,
    to: list[str],
    key: ApiKey,
    client: Client,
    tags: tuple[str, ...] = (),
) -> Submission:
    """A complete message as given, but: Bcc and Resent-Bcc removed (as sendmail -t
    does; the envelope is `to` alone), empty Message-IDs removed (the door adds
    Message-ID and Date when missing); refused without exactly one From or with more
    than one Message-ID. The sender rules are the door's."""
    if sender:
        problem = address_problem(sender)
        if problem is not None:
            raise invalid(problem, "from")
    if b"\x00" in raw:
        raise invalid("Message contains NUL", "raw")
    raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if max(len(line) for line in raw.split(b"\r\n")) > 998:
        raise invalid("A line is longer than 998 octets", "raw")
    fields, rest = header_fields(raw)
    fields = [f for f in fields if f.name not in DROPPED and not f.blank_message_id]
    check_from(fields)
    if sum(f.name == "message-id" for f in fields) > 1:
        raise invalid("More than one Message-ID header", "raw.Message-ID")
    return Submission(
        sender=sender,
        recipients=tuple(dict.fromkeys(to)),
        content=b"".join([*(f.raw for f in fields), rest]),
        source=Source.HTTP,
        client=client,
        key=key,
        tags=tags,
    )


def check_from(fields: list[HeaderField]) -> None:
    """Exactly one From, holding an address (RFC 5322 3.6)."""
    froms = [f for f in fields if f.name == "from"]
    problem = None
    if not froms:
        problem = "The message has no From header"
    elif len(froms) > 1:
        problem = "The message has more than one From header"
    elif not [a for _, a in getaddresses([froms[0].value]) if a]:
        problem = "The From header holds no address"
    if problem is not None:
        raise invalid(problem, "raw.From")


def mailbox(text: str) -> tuple[str, str]:
    """(display name, addr-spec) of a mailbox the request model validated."""
    parsed = parse_mailbox(text)
    assert not isinstance(parsed, str)  # validated by the request model
    return parsed


def header_value(raw: bytes, name: bytes) -> str:
    """The unfolded value of the first header `name` (lower case) in stored bytes."""
    end = raw.find(b"\r\n\r\n")
    value = None
    for line in raw[: end if end >= 0 else len(raw)].split(b"\r\n"):
        if value is not None and line[:1] in (b" ", b"\t"):
            value += " " + line.strip().decode("utf-8", "replace")
            continue
        if value is not None:
            return value
        head, colon, rest = line.partition(b":")
        if colon and head.strip().lower() == name:
            value = rest.strip().decode("utf-8", "replace")
    return value or ""


def accepted_dict(message: NewMessage) -> dict[str, Any]:
    """What a 202 says about one accepted message."""
    return {
        "id": message.id,
        "message_id": message.message_id_header,
        "recipients": [recipient_dict(a, message.suppressed.get(a)) for a in message.recipients],
        "scheduled_at": utc(message.scheduled_at).isoformat() if message.scheduled_at else None,
    }


def recipient_dict(address: str, suppressed: str | None) -> dict[str, Any]:
    if suppressed is None:
        return {"address": address, "status": "queued"}
    return {"address": address, "status": "suppressed", "reason": suppressed}
