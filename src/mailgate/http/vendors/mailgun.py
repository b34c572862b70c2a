"""Mailgun's send API on mailgate, for the official `mailgun` SDK pointed here with
`Client(auth=("api", key), api_url=...)` (docs/vendors/mailgun.md).

    POST /v3/{domain}/messages       form-urlencoded or multipart/form-data (mailgun_fields.py)
    POST /v3/{domain}/messages.mime  multipart: `to` and the `message` part, o: and v: options

Auth is Basic with the user `api` and a send key as the password, as Mailgun's. Every
From address must be at {domain} or a subdomain of it, or at a parent of it that is one of
mailgate's domains (Mailgun sends as {domain}). Once committed: 200 {"id": "<Message-ID>",
"message": "Queued. Thank you."}; the ULID in mailgate's own Message-IDs is the message's
id in /v1/messages. Every refusal is JSON {"message": ...} with Mailgun's status: 400
naming the parameter, 401 "Forbidden", 404 for a domain that is not one, 405 for another
method, 500 (logged) for a bug.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from email.utils import getaddresses

import pydantic
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from mailgate.addresses import ascii_domain, domain_problem
from mailgate.errors import StoreError
from mailgate.http import models as m
from mailgate.http.errors import ApiError
from mailgate.http.send import (
    Send,
    client_of,
    draft_submission,
    mailbox,
    raw_submission,
    read_body,
)
from mailgate.http.vendors.mailgun_fields import (
    Mime,
    Outgoing,
    Refused,
    bad,
    param_of,
    read_message,
    read_mime,
)
from mailgate.http.vendors.mailgun_form import MULTIPART, URLENCODED, Form, FormError, parse_form
from mailgate.ingress.accept import Client, IdempotencyRequest, Submission
from mailgate.ingress.smtp_rules import header_fields
from mailgate.models import ApiKey, NewMessage, Scope
from mailgate.store import Store

log = logging.getLogger("mailgate.http")
ORIGINATORS = ("from", "sender", "reply-to")  # RFC 5322 3.6.2: must be readable text
FORM_TYPES = (URLENCODED, MULTIPART)
QUEUED = "Queued. Thank you."
BASIC = {"WWW-Authenticate": 'Basic realm="MG API"'}

Handler = Callable[[Request, str], Awaitable[Response]]


class Mailgun:
    def __init__(self, send: Send, store: Store) -> None:
        self.send, self.store = send, store

    async def messages(self, request: Request, domain: str) -> Response:
        return await answered(self._messages, request, domain)

    async def mime(self, request: Request, domain: str) -> Response:
        return await answered(self._mime, request, domain)

    async def _messages(self, request: Request, domain: str) -> Response:
        key, form, idem, replay = await self._begin(request)
        if replay is not None:
            return replay
        target = sending_domain(domain)
        cfg = self.send.cfg
        outgoing = read_message(form, key.sandbox, cfg.batch_max, cfg.max_body_bytes)
        client = client_of(request)
        items = [drafted(one, key, client) for one in outgoing]
        await self._check_sender(items[0].sender, target, "from")  # one From for all
        return await self._commit(items, idem)

    async def _mime(self, request: Request, domain: str) -> Response:
        key, form, idem, replay = await self._begin(request)
        if replay is not None:
            return replay
        target = sending_domain(domain)
        item, senders = mime_submission(read_mime(form, key.sandbox), key, client_of(request))
        for sender in senders:  # every From address, not the envelope's alone
            await self._check_sender(sender, target, "message")
        return await self._commit([item], idem)

    async def _check_sender(self, address: str, target: str, param: str) -> None:
        """The From address is at the URL's domain or a subdomain of it; or at a parent
        of it that is one of mailgate's domains (not a public suffix such as co.uk)."""
        domain = ascii_domain(address.rpartition("@")[2]).lower()
        if domain == target or domain.endswith(f".{target}"):
            return
        if target.endswith(f".{domain}") and await self.store.get_domain(domain) is not None:
            return
        raise bad(
            param,
            f"holds {address[:320]!r}, not an address at {target} (the domain in the URL),"
            " at a subdomain of it, or at a parent of it that is a mailgate domain",
        )

    async def _begin(
        self, request: Request
    ) -> tuple[ApiKey, Form, IdempotencyRequest | None, Response | None]:
        """Send.begin's steps with Basic `api:<key>` and the body read as a form, whose
        parts (not a multipart body's random boundary) Idempotency-Key compares."""
        secret = api_password(request.headers.get("authorization"))
        key = await self.send.auth.key_for(request, Scope.SEND, secret)
        body, media_type = await read_body(request, FORM_TYPES, self.send.cfg.max_body_bytes)
        try:
            form = parse_form(body, request.headers.get("content-type", ""))
        except FormError as exc:
            raise Refused(400, str(exc)) from None
        fingerprint = form.fingerprint() if media_type == MULTIPART else body
        idem, replay = await self.send.idempotency.begin(request, key, fingerprint, media_type, 200)
        return key, form, idem, replay

    async def _commit(self, items: list[Submission], idem: IdempotencyRequest | None) -> Response:
        """All or none: the first refusal answers; else one id (the first message's)."""
        prepared = await self.send.prepare(items)
        for p in prepared:
            if isinstance(p, ApiError):
                raise p
        messages = [p for p in prepared if isinstance(p, NewMessage)]
        first = messages[0]
        body = json.dumps({"id": first.message_id_header or f"<{first.id}>", "message": QUEUED})
        return await self.send.commit(messages, body, idem, status=200)


async def answered(handler: Handler, request: Request, domain: str) -> Response:
    """The handler's answer, or its refusal in Mailgun's shape (a bug too: logged, and
    answered 500 in JSON, never a text/plain page)."""
    try:
        return await handler(request, domain)
    except Refused as refused:
        return refusal_response(refused)
    except ApiError as err:
        return refusal_response(from_api_error(err, domain))
    except StoreError:
        return refusal_response(
            Refused(503, "Storage unavailable; retry later", {"Retry-After": "5"})
        )
    except Exception:
        log.exception("mailgun: %s %s failed", request.method, request.url.path)
        return refusal_response(Refused(500, "Internal error"))


def refusal_response(refused: Refused) -> Response:
    """{"message": ...} as ASCII JSON: whatever a message quotes, it can be written."""
    body = json.dumps({"message": refused.message})
    return Response(body, refused.status, refused.headers, media_type="application/json")


def from_api_error(err: ApiError, domain: str) -> Refused:
    """mailgate's refusal in Mailgun's words and statuses (docs/vendors/mailgun.md)."""
    if err.status == 401:
        return Refused(401, "Forbidden", BASIC)
    if err.code == "domain_not_verified":
        return Refused(404, f"Domain not found: {domain}: {err.message}")
    if err.code == "invalid_field":
        if err.field is None:
            return Refused(400, err.message)
        param = "message" if err.field.startswith("raw") else err.field
        return bad(param, f"is invalid: {err.message}")
    if err.code == "sender_not_allowed":
        param = "message" if (err.field or "").startswith("raw") else "from"
        return Refused(403, f"'{param}' parameter is not allowed: {err.message}")
    if err.status == 415:
        return Refused(400, err.message)
    headers = {k: v for k, v in err.headers.items() if k.lower() != "www-authenticate"}
    return Refused(err.status, err.message, headers)


def api_password(header: str | None) -> str | None:
    """The key in `Authorization: Basic base64(api:<key>)`; None without the header (the
    door's 401). Another scheme or user is refused as Mailgun refuses it."""
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            user, colon, password = (
                base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, ValueError):
            user, colon, password = "", "", ""
        if colon and user == "api":
            return password
    raise Refused(401, "Forbidden", BASIC)


def sending_domain(domain: str) -> str:
    """The URL's {domain} in A-labels, lower case; 404 when it cannot be a domain name (an
    address literal such as [127.0.0.1] is not one)."""
    if "." not in domain or domain.startswith("[") or domain_problem(domain) is not None:
        raise Refused(404, f"Domain not found: {domain[:253]}")
    return ascii_domain(domain).lower()


def drafted(one: Outgoing, key: ApiKey, client: Client) -> Submission:
    """One message's fields validated by mailgate's own model, as a draft submission."""
    try:
        req = m.SendRequest.model_validate(one.request)
    except pydantic.ValidationError as exc:
        raise validation_refusal(exc, one.files) from None
    return draft_submission(req, key, client, req.subject, one.in_reply_to, one.references)


def mime_submission(mime: Mime, key: ApiKey, client: Client) -> tuple[Submission, list[str]]:
    """The MIME as given (send.py's raw rules: Bcc removed, one From), its first From
    address the envelope sender, `to` the envelope recipients; and every From address."""
    raw = raw_submission(mime.raw, "", [], key, client)
    assert isinstance(raw.content, bytes)
    senders = from_addresses(raw.content)
    fields = {"from": senders[0] if senders else "", "to": mime.to, **mime.options}
    try:
        req = m.SendRequest.model_validate(fields)  # mailgate's rules for the envelope too
    except pydantic.ValidationError as exc:
        raise validation_refusal(exc, (), sender="message") from None
    sub = dataclasses.replace(
        raw,
        sender=mailbox(req.from_)[1],
        recipients=tuple(dict.fromkeys(mailbox(to)[1] for to in req.to)),
        tags=tuple(req.tags),
        metadata=dict(req.metadata),
        scheduled_at=req.scheduled_at.timestamp() if req.scheduled_at else None,
    )
    return sub, senders


def from_addresses(raw: bytes) -> list[str]:
    """Every address in the message's From header (raw_submission made sure there is one
    From). The originator headers must be UTF-8: read with replacement characters, a
    sender would be another address than the one written."""
    fields, _ = header_fields(raw)
    for f in fields:
        if f.name in ORIGINATORS:
            try:
                f.raw.decode("utf-8")
            except UnicodeDecodeError:
                raise bad("message", f"has a {f.name.title()} header that is not UTF-8") from None
    value = next(f.value for f in fields if f.name == "from")
    return [a for _, a in getaddresses([value]) if a]


def validation_refusal(
    exc: pydantic.ValidationError, files: tuple[str, ...], sender: str = "from"
) -> Refused:
    """The first field mailgate's model refused, named as the Mailgun parameter."""
    first = exc.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    param = param_of(loc, files, sender)
    msg = str(first["msg"]).removeprefix("Value error, ")
    is_list = first["type"] == "too_long"  # too many addresses, not a wrong one
    if param in ("from", "to", "cc", "bcc", "h:Reply-To") and len(loc) <= 2 and not is_list:
        return bad(param, f"is not a valid address: {msg}")
    detail = f" ({loc[2]})" if loc[:1] == ("attachments",) and len(loc) > 2 else ""
    return bad(param, f"is invalid{detail}: {msg}")


def router(send: Send, store: Store) -> APIRouter:
    mailgun = Mailgun(send, store)
    r = APIRouter(include_in_schema=False)
    r.add_api_route("/v3/{domain}/messages", mailgun.messages, methods=["POST"])
    r.add_api_route("/v3/{domain}/messages.mime", mailgun.mime, methods=["POST"])
    others = ["GET", "PUT", "PATCH", "DELETE"]  # Mailgun's 405, not FastAPI's {"detail"}
    r.add_api_route("/v3/{domain}/messages", not_allowed, methods=others)
    r.add_api_route("/v3/{domain}/messages.mime", not_allowed, methods=others)
    return r


async def not_allowed(request: Request, domain: str) -> Response:
    return refusal_response(Refused(405, "Method not allowed", {"Allow": "POST"}))
