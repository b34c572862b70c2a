"""The HTTP JSON API: FastAPI routes in front of the one door.

Order of checks on every POST: content type (415), API key (401), scope and sender
domain (403), rate (429), size (413), JSON (400), fields (422), then compose and
accept(); the 202 is sent only after accept() returned, i.e. after the commit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import json
import os
import time
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pydantic
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import ClientDisconnect

from mailgate import keys
from mailgate.addresses import address_problem, parse_mailbox
from mailgate.auth_guard import AuthGuard
from mailgate.compose import Attachment as DraftAttachment
from mailgate.compose import Draft
from mailgate.config import HttpConfig
from mailgate.ingress import http_models as m
from mailgate.ingress.accept import (
    Client,
    Door,
    IdempotencyRequest,
    Refusal,
    Rule,
    Submission,
)
from mailgate.ingress.smtp_rules import HeaderField, header_fields
from mailgate.models import (
    ApiKey,
    Message,
    NewMessage,
    Recipient,
    RecipientStatus,
    Scope,
    Source,
)
from mailgate.store import Store

IDEMPOTENCY_TTL = 24 * 3600.0
AUTH_CACHE_SECONDS = 5.0  # a revoked key may keep working this long on a busy node
JSON_TYPES = ("application/json",)


def shutting_down() -> ApiError:
    return ApiError(
        503, "shutting_down", "Server is shutting down, retry", headers={"Retry-After": "5"}
    )


class ApiError(Exception):
    """An error answered as {"error": {"code", "message", "field"}}."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"code": e.code, "message": e.message, "field": e.field}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def field_path(loc: tuple[int | str, ...]) -> str:
    """("attachments", 2, "content") -> "attachments[2].content"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + ("from" if part == "from_" else str(part))
    return out


def validation_error(exc: pydantic.ValidationError, prefix: str = "") -> ApiError:
    first = exc.errors(include_url=False)[0]
    if first["type"] in ("json_invalid", "json_type") or first["type"].startswith("recursion"):
        return ApiError(400, "malformed_json", f"Request body is not valid JSON: {first['msg']}")
    path = field_path(tuple(first["loc"]))
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "Unknown field"
    return ApiError(422, "invalid_field", msg, path or None)


@dataclass
class Metrics:
    registry: CollectorRegistry  # what /metrics exposes
    accepted: Counter
    rejected: Counter
    latency: Histogram
    queue_depth: Gauge

    @classmethod
    def create(cls, shared_dir: Path | None = None) -> Metrics:
        """The metrics of this process. With `shared_dir` (serve's processes), each
        process writes its values there (prometheus_client's multiprocess mode) and
        /metrics, whichever process answers, shows the sum over all of them."""
        r = CollectorRegistry()
        exposed = r
        if shared_dir is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared_dir)
            prometheus_values.ValueClass = prometheus_values.MultiProcessValue()  # type: ignore[no-untyped-call]
            exposed = CollectorRegistry()
            MultiProcessCollector(exposed, path=str(shared_dir))  # type: ignore[no-untyped-call]
        return cls(
            exposed,
            Counter("mailgate_accepted_messages", "Messages committed", ["source"], registry=r),
            Counter("mailgate_rejected_requests", "Requests refused", ["reason"], registry=r),
            Histogram(
                "mailgate_http_request_seconds",
                "HTTP request latency",
                ["route"],
                registry=r,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
            Gauge(
                "mailgate_queue_depth",
                "Recipients by status",
                ["status"],
                registry=r,
                multiprocess_mode="mostrecent",  # set from the store by whoever is scraped
            ),
        )


class Api:
    """Request handling that does not depend on FastAPI; create_api() routes to it."""

    def __init__(
        self,
        store: Store,
        cfg: HttpConfig,
        hostname: str,
        metrics: Metrics,
        guard: AuthGuard | None = None,
        door: Door | None = None,
    ) -> None:
        self.store, self.cfg, self.hostname, self.metrics = store, cfg, hostname, metrics
        if door is None:  # a door of its own, counting into this process's metrics

            def count(source: Source, n: int) -> None:
                metrics.accepted.labels(source).inc(n)

            door = Door(store, hostname, cfg.max_recipients, count=count)
        self.door = door
        self.guard = guard or AuthGuard()
        self._auth_cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self.draining = False  # set at shutdown: new requests get 503, in-flight ones finish
        self.starting = False  # /readyz says 503 while serve's ingress children start

    # -- checks -------------------------------------------------------------------
    async def key_for(self, request: Request, scope: Scope) -> ApiKey:
        if self.draining:
            raise shutting_down()
        secret = _secret_from(request.headers.get("authorization", ""))
        if secret is None:
            raise ApiError(
                401,
                "unauthorized",
                "Missing API key: use Authorization: Bearer <key>",
                headers={"WWW-Authenticate": 'Bearer realm="mailgate"'},
            )
        ip = request.client.host if request.client else "unknown"
        if self.guard.ip_locked(ip):
            raise ApiError(
                429,
                "too_many_auth_failures",
                "Too many failed authentications from your address",
                headers={"Retry-After": str(self.guard.retry_after(ip))},
            )
        now = time.monotonic()
        cached = self._auth_cache.get(secret)
        if cached is not None and cached[1] > now:
            key = cached[0]
        else:
            key = await keys.authenticate(self.store, secret)
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[secret] = (key, now + AUTH_CACHE_SECONDS)
        if key is not None and self.guard.key_locked(key.id, ip):
            key = None  # locked: answered exactly like a wrong key
        if key is None:
            # the same answer and a growing delay for unknown, wrong and locked keys
            await asyncio.sleep(self.guard.failed(ip, keys.key_id_of(secret)))
            raise ApiError(
                401,
                "unauthorized",
                "Invalid API key",
                headers={"WWW-Authenticate": 'Bearer realm="mailgate"'},
            )
        if not key.has(scope):
            raise ApiError(403, "forbidden", f"This key lacks the {scope} scope")
        self._rate(key)
        return key

    def _rate(self, key: ApiKey) -> None:
        rate = self.cfg.rate_limit_per_second
        if rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(key.id, (float(self.cfg.rate_limit_burst), now))
        tokens = min(float(self.cfg.rate_limit_burst), tokens + (now - last) * rate)
        if tokens < 1:
            wait = max(1, int((1 - tokens) / rate + 0.999))
            raise ApiError(
                429,
                "rate_limited",
                "Too many requests for this key",
                headers={"Retry-After": str(wait)},
            )
        self._buckets[key.id] = (tokens - 1, now)

    async def begin_post(
        self, request: Request, types: tuple[str, ...] = JSON_TYPES
    ) -> tuple[ApiKey, bytes, tuple[str, str] | None, Response | None]:
        """Key (send scope), body, idempotency fingerprint and a replay if there is one."""
        key = await self.key_for(request, Scope.SEND)
        body = await self.body(request, types)
        idem, replay = await self.check_replay(request, key, body)
        return key, body, idem, replay

    async def body(self, request: Request, types: tuple[str, ...] = JSON_TYPES) -> bytes:
        if _media_type(request) not in types:
            raise ApiError(
                415, "unsupported_media_type", f"Content-Type must be {' or '.join(types)}"
            )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.cfg.max_body_bytes:
            raise ApiError(413, "too_large", f"Body over {self.cfg.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.cfg.max_body_bytes:
                    raise ApiError(413, "too_large", f"Body over {self.cfg.max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # the client went away mid-body: nothing to answer
            raise ApiError(400, "client_disconnected", "The client closed the request") from None
        return b"".join(chunks)

    # -- building messages ------------------------------------------------------------
    async def draft_message(
        self, req: m.SendRequest, key: ApiKey, client: Client, prefix: str = ""
    ) -> Submission:
        """The JSON request as a submission with a draft; the door composes it."""

        def at(name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        if not (req.to or req.cc or req.bcc):
            raise ApiError(
                422, "invalid_field", "At least one of to, cc, bcc is required", at("to")
            )
        if req.text is None and req.html is None:
            raise ApiError(422, "invalid_field", "Give text, html or both", at("text"))
        subject, in_reply_to = req.subject, None
        references: tuple[str, ...] = ()
        if req.reply_to_message_id is not None:
            subject, in_reply_to, references = await self._thread(req, key, at)
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

    async def _thread(
        self, req: m.SendRequest, key: ApiKey, at: Any
    ) -> tuple[str | None, str | None, tuple[str, ...]]:
        assert req.reply_to_message_id is not None
        original = await self.visible_message(
            req.reply_to_message_id, key, field=at("reply_to_message_id")
        )
        raw = await self.store.get_raw(original.id) or b""
        refs = _header(raw, b"references").split()
        parent = original.message_id_header
        if parent:
            refs = [r for r in refs if r != parent] + [parent]
        subject = req.subject
        if subject is None:
            base = original.subject or ""
            subject = base if base.lower().startswith("re:") else f"Re: {base}".rstrip()
        return subject, parent, tuple(refs[-20:])

    async def visible_message(
        self, message_id: str, key: ApiKey, field: str | None = None
    ) -> Message:
        message = await self.store.get_message(message_id)
        if message is None or (not key.has(Scope.ADMIN) and message.api_key_id != key.id):
            raise ApiError(404, "not_found", f"No message {message_id}", field)
        return message

    def raw_message(
        self,
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
                raise ApiError(422, "invalid_field", problem, "from")
        if b"\x00" in raw:
            raise ApiError(422, "invalid_field", "Message contains NUL", "raw")
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if max(len(line) for line in raw.split(b"\r\n")) > 998:
            raise ApiError(422, "invalid_field", "A line is longer than 998 octets", "raw")
        fields, rest = header_fields(raw)
        fields = [f for f in fields if f.name not in _DROPPED and not f.blank_message_id]
        _check_from(fields)
        if sum(f.name == "message-id" for f in fields) > 1:
            raise ApiError(
                422, "invalid_field", "More than one Message-ID header", "raw.Message-ID"
            )
        return Submission(
            sender=sender,
            recipients=tuple(dict.fromkeys(to)),
            content=b"".join([*(f.raw for f in fields), rest]),
            source=Source.HTTP,
            client=client,
            key=key,
            tags=tags,
        )

    # -- committing -----------------------------------------------------------------------
    async def commit_one(self, sub: Submission, idem: tuple[str, str] | None) -> Response:
        """The door for one message; the 202 quotes the prepared message."""
        message = self.door.prepare(sub)
        if isinstance(message, Refusal):
            raise refusal_error(message, raw=isinstance(sub.content, bytes))
        body = accepted_body(message)
        return await self.commit_many([message], body, idem)

    async def commit_many(
        self, messages: list[NewMessage], body: str, idem: tuple[str, str] | None
    ) -> Response:
        request = None if idem is None else IdempotencyRequest(*idem, IDEMPOTENCY_TTL)
        answer = await self.door.commit(messages, request, body)
        if isinstance(answer, Refusal):
            raise refusal_error(answer)
        if answer.replayed and idem is not None:
            return await self.replay(idem)
        return Response(body, status_code=202, media_type="application/json")

    async def check_replay(
        self, request: Request, key: ApiKey, body: bytes
    ) -> tuple[tuple[str, str] | None, Response | None]:
        """(idempotency key and request hash, or None; a replayed response, or None)."""
        idem_key = request.headers.get("idempotency-key")
        if idem_key is None:
            return None, None
        if not 1 <= len(idem_key) <= 255 or any(c in idem_key for c in "\r\n\x00"):
            raise ApiError(
                422, "invalid_field", "Idempotency-Key must be 1-255 characters", "Idempotency-Key"
            )
        shape = request.url.path
        if _media_type(request) == "message/rfc822":  # its envelope is in the query string
            shape += "?" + request.url.query
        digest = hashlib.sha256(shape.encode() + b"\0" + body).hexdigest()
        idem = (f"{key.id}:{idem_key}", digest)
        found = await self.store.idempotent_response(key.id, idem[0])
        if found is None:
            return idem, None
        return idem, self._replayed(found, idem)

    async def replay(self, idem: tuple[str, str]) -> Response:
        """Answer a request that lost the race for its idempotency key: the winner's row
        is committed (the conflict was found inside a later transaction), so read it."""
        found = await self.store.idempotent_response(idem[0].split(":", 1)[0], idem[0])
        if found is None:  # it expired in between: let the client retry
            raise _unavailable()
        return self._replayed(found, idem)

    def _replayed(self, found: tuple[str, str], idem: tuple[str, str]) -> Response:
        if found[0] != idem[1]:
            raise ApiError(
                409,
                "idempotency_conflict",
                "This Idempotency-Key was used with a different request",
                "Idempotency-Key",
            )
        return Response(
            found[1],
            status_code=202,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )

    # -- reading ----------------------------------------------------------------------------
    async def message_out(self, message: Message, with_events: bool) -> m.MessageOut:
        rcpts = await self.store.recipients(message.id)
        by_id = {r.id: r.address for r in rcpts}
        events = None
        if with_events:
            events = [
                m.EventOut(
                    at=_dt(e.at),
                    kind=e.kind,
                    recipient=by_id.get(e.recipient_id or -1),
                    details=e.details,
                )
                for e in await self.store.events(message.id)
            ]
        return m.MessageOut(
            id=message.id,
            created_at=_dt(message.created_at),
            source=message.source,
            sender=message.sender,
            subject=message.subject,
            message_id=message.message_id_header,
            tags=list(message.tags),
            metadata=message.metadata,
            size=message.size,
            scheduled_at=_dt(message.scheduled_at) if message.scheduled_at else None,
            recipients=[_recipient_out(r) for r in rcpts],
            events=events,
        )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _secret_from(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        return value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(":")[2] or None
    return None


def mailbox(text: str) -> tuple[str, str]:
    """(display name, addr-spec) of a mailbox the request model validated."""
    parsed = parse_mailbox(text)
    assert not isinstance(parsed, str)  # validated by the request model
    return parsed


def _header(raw: bytes, name: bytes) -> str:
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


# Headers a raw submission loses: hidden recipients must not reach the visible ones.
_DROPPED = frozenset({"bcc", "resent-bcc"})


def _check_from(fields: list[HeaderField]) -> None:
    """Exactly one From, holding an address (RFC 5322 3.6)."""
    froms = [f for f in fields if f.name == "from"]
    problem = None
    if not froms:
        problem = "The message has no From header"
    elif len(froms) > 1:
        problem = "The message has more than one From header"
    elif not _addresses(froms[0].value):
        problem = "The From header holds no address"
    if problem is not None:
        raise ApiError(422, "invalid_field", problem, "raw.From")


def _addresses(value: str) -> list[str]:
    return [a for _, a in getaddresses([value]) if a]


def _dt(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


def _recipient_out(r: Recipient) -> m.RecipientOut:
    reply = r.last_reply
    return m.RecipientOut(
        address=r.address,
        status=r.status,
        attempts=r.attempts,
        last_reply=f"{reply.code} {reply.enhanced + ' ' if reply.enhanced else ''}{reply.text}"
        if reply
        else None,
        remote_host=r.remote_host,
        next_attempt_at=_dt(r.next_attempt_at)
        if r.next_attempt_at and r.status in (RecipientStatus.QUEUED, RecipientStatus.DEFERRED)
        else None,
    )


def accepted_dict(message: NewMessage) -> dict[str, Any]:
    """What a 202 says about one accepted message."""
    return {
        "id": message.id,
        "message_id": message.message_id_header,
        "recipients": [{"address": a, "status": "queued"} for a in message.recipients],
        "scheduled_at": _dt(message.scheduled_at).isoformat() if message.scheduled_at else None,
    }


def accepted_body(message: NewMessage) -> str:
    return json.dumps(accepted_dict(message))


# How the door's refusals read over HTTP: (status, error code) per rule.
_REFUSED = {
    Rule.SENDER: (403, "sender_not_allowed"),
    Rule.RECIPIENTS: (422, "invalid_field"),
    Rule.SUPPRESSED: (422, "suppressed"),
    Rule.UNAVAILABLE: (503, "unavailable"),
}


def refusal_error(refusal: Refusal, *, raw: bool = False, prefix: str = "") -> ApiError:
    """The door's refusal as an HTTP error; its reason is the message and its field is
    named as the request names it (a JSON path, or raw.<Header> for a raw message)."""
    if refusal.rule is Rule.UNAVAILABLE:
        return _unavailable()
    status, code = _REFUSED[refusal.rule]
    if refusal.field == "recipients":
        name = "to"
    elif refusal.field == "sender" or (not raw and refusal.field == "From"):
        name = "from"
    else:
        name = f"raw.{refusal.field}"
    return ApiError(status, code, refusal.reason, f"{prefix}.{name}" if prefix else name)


def client_of(request: Request) -> Client:
    """The Received facts of an HTTP request: the peer's address and the protocol."""
    return Client(request.client.host if request.client else "unknown", "HTTP")


def _unavailable() -> ApiError:
    return ApiError(
        503,
        "unavailable",
        "Storage cannot commit right now; retry later",
        headers={"Retry-After": "5"},
    )
