"""Nylas v3's email API on mailgate, so that the official `nylas` SDK works unchanged
with `Client(api_key=..., api_uri="http://host:8025")` (docs/mailboxes-api.md):

    grants.py    /v3/connect/custom, /v3/grants[/{id}]: connected mailboxes
    reading.py   /v3/grants/{g}/messages, threads, folders, attachments: the synced mailbox
    outgoing.py  /v3/grants/{g}/messages/send, /messages/schedules, /drafts: sending from it
    body.py      a Nylas send body as mailgate's send request, and the sent message's JSON
    shapes.py    Nylas' JSON objects, envelope, errors and query strings (pure)

Every route needs an API key (Bearer) that owns the grant, or an admin key; another
key's grant is a 404 like a missing one. Reading takes the read or send scope; every
change the send scope. Every answer is JSON, errors as
`{"request_id", "error": {"type", "message"}}` (the SDK raises NylasApiError with it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from mailgate.errors import MailboxAuthRefused, MailboxError, NotFound, RequestError, StoreError
from mailgate.http.errors import ApiError, request_error
from mailgate.http.nylas import shapes
from mailgate.http.nylas.body import read_json
from mailgate.http.nylas.grants import GrantRoutes
from mailgate.http.nylas.outgoing import Outgoing
from mailgate.http.nylas.reading import MailboxReader, Reading
from mailgate.http.send import JSON_TYPES, Send, read_body
from mailgate.mailboxes.grants import GrantAdmin, GrantError
from mailgate.mailboxes.models import Grant
from mailgate.models import ApiKey, Scope
from mailgate.store import Store

log = logging.getLogger("mailgate.http")
Handler = Callable[[Request], Awaitable[Response]]
READING = (Scope.READ, Scope.SEND)


class Nylas:
    def __init__(
        self, send: Send, store: Store, admin: GrantAdmin, mailboxes: MailboxReader | None
    ) -> None:
        self.send, self.auth, self.admin, self.mailboxes = send, send.auth, admin, mailboxes
        self.grants = GrantRoutes(admin)
        self.outgoing = Outgoing(send, store, admin, mailboxes)

    async def _body(self, request: Request) -> Any:
        body, _ = await read_body(request, JSON_TYPES, self.send.cfg.max_body_bytes)
        return read_json(body)

    async def _grant(
        self, request: Request, scope: Scope | tuple[Scope, ...]
    ) -> tuple[ApiKey, Grant]:
        key = await self.auth.key_for(request, scope)
        return key, await self.admin.visible(str(request.path_params["grant_id"]), key)

    def _reading(self) -> Reading:
        if self.mailboxes is None:
            raise ApiError(503, "unavailable", "Mailbox sync is not running in this process")
        return Reading(self.mailboxes)

    # -- grants ---------------------------------------------------------------------------
    async def create_grant(self, request: Request) -> Response:
        key = await self.auth.key_for(request, Scope.SEND)
        return await self.grants.create(key, await self._body(request))

    async def list_grants(self, request: Request) -> Response:
        return await self.grants.list(await self.auth.key_for(request, READING))

    async def get_grant(self, request: Request) -> Response:
        key = await self.auth.key_for(request, READING)
        return await self.grants.get(key, str(request.path_params["grant_id"]))

    async def update_grant(self, request: Request) -> Response:
        key = await self.auth.key_for(request, Scope.SEND)
        grant_id = str(request.path_params["grant_id"])
        return await self.grants.update(key, grant_id, await self._body(request))

    async def delete_grant(self, request: Request) -> Response:
        key = await self.auth.key_for(request, Scope.SEND)
        return await self.grants.delete(key, str(request.path_params["grant_id"]))

    # -- reading --------------------------------------------------------------------------
    async def list_messages(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self._reading().list_messages(grant, request.query_params)

    async def get_message(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self._reading().get_message(grant, request.path_params["message_id"])

    async def update_message(self, request: Request) -> Response:
        _, grant = await self._grant(request, Scope.SEND)
        body = await self._body(request)
        return await self._reading().update_message(grant, request.path_params["message_id"], body)

    async def delete_message(self, request: Request) -> Response:
        _, grant = await self._grant(request, Scope.SEND)
        return await self._reading().delete_message(grant, request.path_params["message_id"])

    async def list_threads(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self._reading().list_threads(grant, request.query_params)

    async def get_thread(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self._reading().get_thread(grant, request.path_params["thread_id"])

    async def list_folders(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self._reading().list_folders(grant)

    async def get_folder(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self._reading().get_folder(grant, request.path_params["folder_id"])

    async def find_attachment(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        attachment_id = str(request.path_params["attachment_id"])
        return await self._reading().find_attachment(grant, attachment_id, request.query_params)

    async def download(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        attachment_id = str(request.path_params["attachment_id"])
        return await self._reading().download(grant, attachment_id, request.query_params)

    # -- sending --------------------------------------------------------------------------
    async def send_message(self, request: Request) -> Response:
        return await self.outgoing.send_message(request, str(request.path_params["grant_id"]))

    async def schedules(self, request: Request) -> Response:
        key = await self.auth.key_for(request, READING)
        return await self.outgoing.schedules(key, str(request.path_params["grant_id"]))

    async def schedule(self, request: Request) -> Response:
        key = await self.auth.key_for(request, READING)
        p = request.path_params
        return await self.outgoing.schedule(key, str(p["grant_id"]), str(p["schedule_id"]))

    async def cancel_schedule(self, request: Request) -> Response:
        key = await self.auth.key_for(request, Scope.SEND)
        p = request.path_params
        return await self.outgoing.cancel_schedule(key, str(p["grant_id"]), str(p["schedule_id"]))

    async def create_draft(self, request: Request) -> Response:
        key, grant = await self._grant(request, Scope.SEND)
        return await self.outgoing.create_draft(key, grant, await self._body(request))

    async def list_drafts(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self.outgoing.list_drafts(grant, request.query_params)

    async def get_draft(self, request: Request) -> Response:
        _, grant = await self._grant(request, READING)
        return await self.outgoing.get_draft(grant, str(request.path_params["draft_id"]))

    async def update_draft(self, request: Request) -> Response:
        key, grant = await self._grant(request, Scope.SEND)
        draft_id = str(request.path_params["draft_id"])
        return await self.outgoing.update_draft(key, grant, draft_id, await self._body(request))

    async def send_draft(self, request: Request) -> Response:
        p = request.path_params
        return await self.outgoing.send_draft(request, str(p["grant_id"]), str(p["draft_id"]))

    async def delete_draft(self, request: Request) -> Response:
        _, grant = await self._grant(request, Scope.SEND)
        return await self.outgoing.delete_draft(grant, str(request.path_params["draft_id"]))


def router(nylas: Nylas) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    g = "/v3/grants/{grant_id}"
    for method, path, handler in (
        ("POST", "/v3/connect/custom", nylas.create_grant),
        ("POST", "/v3/grants", nylas.create_grant),
        ("GET", "/v3/grants", nylas.list_grants),
        ("GET", g, nylas.get_grant),
        ("PATCH", g, nylas.update_grant),
        ("PUT", g, nylas.update_grant),
        ("DELETE", g, nylas.delete_grant),
        ("GET", f"{g}/messages", nylas.list_messages),
        ("POST", f"{g}/messages/send", nylas.send_message),
        ("GET", f"{g}/messages/schedules", nylas.schedules),
        ("GET", f"{g}/messages/schedules/{{schedule_id}}", nylas.schedule),
        ("DELETE", f"{g}/messages/schedules/{{schedule_id}}", nylas.cancel_schedule),
        ("GET", f"{g}/messages/{{message_id}}", nylas.get_message),
        ("PUT", f"{g}/messages/{{message_id}}", nylas.update_message),
        ("DELETE", f"{g}/messages/{{message_id}}", nylas.delete_message),
        ("GET", f"{g}/threads", nylas.list_threads),
        ("GET", f"{g}/threads/{{thread_id}}", nylas.get_thread),
        ("GET", f"{g}/folders", nylas.list_folders),
        ("GET", f"{g}/folders/{{folder_id}}", nylas.get_folder),
        ("GET", f"{g}/attachments/{{attachment_id}}", nylas.find_attachment),
        ("GET", f"{g}/attachments/{{attachment_id}}/download", nylas.download),
        ("POST", f"{g}/drafts", nylas.create_draft),
        ("GET", f"{g}/drafts", nylas.list_drafts),
        ("GET", f"{g}/drafts/{{draft_id}}", nylas.get_draft),
        ("PUT", f"{g}/drafts/{{draft_id}}", nylas.update_draft),
        ("POST", f"{g}/drafts/{{draft_id}}", nylas.send_draft),
        ("DELETE", f"{g}/drafts/{{draft_id}}", nylas.delete_draft),
    ):
        r.add_api_route(path, answered(handler), methods=[method])
    every = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    for path in ("/v3/grants/{rest:path}", "/v3/connect/{rest:path}"):  # what is left
        r.add_api_route(path, answered(no_route), methods=every)
    return r


async def no_route(request: Request) -> Response:
    raise ApiError(
        404, "not_found", f"mailgate has no Nylas route {request.method} {request.url.path}"
    )


def answered(handler: Handler) -> Handler:
    """The handler with every error answered in Nylas' shape, as JSON."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as err:
            return shapes.error(err)
        except GrantError as err:
            return shapes.error(ApiError(err.status, "grant", err.message, err.field))
        except NotFound as err:
            return shapes.error(ApiError(404, "not_found", str(err)))
        except MailboxAuthRefused as err:  # the grant is marked invalid: re-authenticate it
            return shapes.error(ApiError(401, "grant_invalid", str(err)))
        except MailboxError as err:
            return shapes.error(ApiError(502, "mailbox_unreachable", str(err)))
        except RequestError as err:
            return shapes.error(request_error(err))
        except StoreError:
            unavailable = ApiError(
                503, "unavailable", "Storage unavailable; retry later", headers={"Retry-After": "5"}
            )
            return shapes.error(unavailable)
        except Exception:  # a bug: say so in JSON, keep the details for the log
            log.exception("http: %s %s failed", request.method, request.url.path)
            return shapes.error(ApiError(500, "internal", "Internal error"))

    return run
