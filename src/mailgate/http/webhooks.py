"""Webhook endpoints over HTTP (read scope: a key manages the endpoints of its own
messages' events; admin all): create (its secret shown once), list, get, update,
delete, rotate the secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from mailgate.events.endpoints import WebhookAdmin
from mailgate.http import models as m
from mailgate.http.auth import Auth
from mailgate.http.errors import NO_STORE
from mailgate.http.messages import utc
from mailgate.http.openapi import ERRORS, request_body
from mailgate.http.send import parse_json, read_body
from mailgate.models import Scope, Webhook

JSON_TYPES = ("application/json",)
MAX_BODY = 8192


def webhook_out(hook: Webhook, secret: str | None = None) -> m.WebhookOut:
    return m.WebhookOut(
        id=hook.id,
        url=hook.url,
        events=list(hook.events),
        description=hook.description,
        enabled=hook.enabled,
        disabled_reason=hook.disabled_reason,
        created_at=utc(hook.created_at),
        updated_at=utc(hook.updated_at),
        secret=secret,
    )


class Webhooks:
    def __init__(self, auth: Auth, admin: WebhookAdmin) -> None:
        self.auth, self.admin = auth, admin

    async def create(self, request: Request, response: Response) -> m.WebhookOut:
        key = await self.auth.key_for(request, Scope.READ)
        body, _ = await read_body(request, JSON_TYPES, MAX_BODY)
        req = parse_json(m.WebhookRequest, body)
        hook, secret = await self.admin.create(key, req.url, req.events, req.description)
        response.headers["Cache-Control"] = NO_STORE
        return webhook_out(hook, secret)

    async def list_webhooks(self, request: Request) -> m.WebhookList:
        key = await self.auth.key_for(request, Scope.READ)
        return m.WebhookList(data=[webhook_out(h) for h in await self.admin.list_for(key)])

    async def get(self, request: Request, hook_id: str) -> m.WebhookOut:
        key = await self.auth.key_for(request, Scope.READ)
        return webhook_out(await self.admin.get(key, hook_id))

    async def update(self, request: Request, hook_id: str) -> m.WebhookOut:
        key = await self.auth.key_for(request, Scope.READ)
        body, _ = await read_body(request, JSON_TYPES, MAX_BODY)
        req = parse_json(m.WebhookUpdate, body)
        hook = await self.admin.update(
            key, hook_id, req.url, req.events, req.description, req.enabled
        )
        return webhook_out(hook)

    async def rotate(self, request: Request, response: Response, hook_id: str) -> m.WebhookOut:
        key = await self.auth.key_for(request, Scope.READ)
        hook, secret = await self.admin.rotate_secret(key, hook_id)
        response.headers["Cache-Control"] = NO_STORE
        return webhook_out(hook, secret)

    async def attempts(
        self, request: Request, hook_id: str, limit: int = Query(50, ge=1, le=500)
    ) -> dict[str, Any]:
        key = await self.auth.key_for(request, Scope.READ)
        return {"data": await self.admin.attempts(key, hook_id, limit)}

    async def test(self, request: Request, hook_id: str) -> JSONResponse:
        key = await self.auth.key_for(request, Scope.READ)
        event_id = await self.admin.send_test(key, hook_id)
        return JSONResponse({"event_id": event_id, "status": "queued"}, status_code=202)

    async def replay(self, request: Request, event_id: str) -> JSONResponse:
        key = await self.auth.key_for(request, Scope.READ)
        sent_id, endpoints = await self.admin.replay(key, event_id)
        return JSONResponse({"event_id": sent_id, "endpoints": endpoints}, status_code=202)

    async def delete(self, request: Request, hook_id: str) -> dict[str, bool]:
        key = await self.auth.key_for(request, Scope.READ)
        await self.admin.delete(key, hook_id)
        return {"deleted": True}


def router(hooks: Webhooks) -> APIRouter:
    r = APIRouter()
    routes: tuple[tuple[str, str, Any, Any, str, Any, int], ...] = (
        (
            "POST",
            "",
            hooks.create,
            m.WebhookOut,
            "Add an endpoint (its secret shown once)",
            m.WebhookRequest,
            201,
        ),
        ("GET", "", hooks.list_webhooks, m.WebhookList, "List endpoints", None, 200),
        ("GET", "/{hook_id}", hooks.get, m.WebhookOut, "One endpoint", None, 200),
        (
            "PATCH",
            "/{hook_id}",
            hooks.update,
            m.WebhookOut,
            "Change url, events, enabled",
            m.WebhookUpdate,
            200,
        ),
        ("DELETE", "/{hook_id}", hooks.delete, None, "Remove an endpoint", None, 200),
        (
            "POST",
            "/{hook_id}/rotate-secret",
            hooks.rotate,
            m.WebhookOut,
            "A new secret (the old one signs beside it for a day)",
            None,
            200,
        ),
        ("GET", "/{hook_id}/attempts", hooks.attempts, None, "Attempts, newest first", None, 200),
        ("POST", "/{hook_id}/test", hooks.test, None, "Send a webhook.test event", None, 202),
    )
    for method, path, endpoint, answer, summary, body, status in routes:
        r.add_api_route(
            "/v1/webhooks" + path,
            endpoint,
            methods=[method],
            response_model=answer,
            responses=ERRORS,
            openapi_extra=request_body(body) if body else None,
            status_code=status,
            summary=summary,
        )
    r.add_api_route(
        "/v1/events/{event_id}/replay",
        hooks.replay,
        methods=["POST"],
        responses=ERRORS,
        status_code=202,
        summary="Send an event again (same id) to every endpoint that takes it",
    )
    return r
