"""The HTTP API assembled: its parts (`Api`), the routes of each concern, the error
handlers, latency timing and the `Direct` fast path for the two hot routes.

    send.py      POST /v1/messages, /batch, /raw          -> the door
    messages.py  GET /v1/messages[/{id}[/raw]], POST /{id}/cancel
    domains.py   /v1/domains: sending domains, their records and DKIM keys (admin)
    events.py    GET /v1/events: the outbox in commit order, after a cursor
    webhooks.py  /v1/webhooks: endpoints events are sent to, their secrets
    health.py    /healthz, /readyz, /metrics
    vendors/     Resend, Postmark, SendGrid and Mailgun's send routes, for their SDKs
    nylas/       Nylas v3's grants, mailbox and send routes, for the `nylas` SDK
    ../ui/       /ui, the dashboard (its own Starlette app), and /docs without a CDN
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from mailgate.auth_guard import AuthGuard
from mailgate.config import HttpConfig
from mailgate.domains.manage import DomainAdmin
from mailgate.errors import RequestError, StoreError
from mailgate.events.endpoints import WebhookAdmin
from mailgate.http import (
    domains,
    events,
    health,
    keys,
    messages,
    nylas,
    send,
    suppressions,
    vendors,
    webhooks,
)
from mailgate.http.auth import Auth
from mailgate.http.errors import ApiError, error_response, query_error, rejected
from mailgate.http.idempotency import Idempotency
from mailgate.http.nylas.reading import MailboxReader
from mailgate.http.openapi import body_schemas
from mailgate.ingress.accept import Door
from mailgate.lifecycle import Lifecycle
from mailgate.mailboxes.grants import GrantAdmin
from mailgate.metrics import Metrics
from mailgate.store import Store
from mailgate.ui.apidocs import add_docs
from mailgate.ui.routes import dashboard

log = logging.getLogger("mailgate.http")
Handler = Callable[[Request], Awaitable[Response]]
REPEATED_SLASHES = re.compile("/{2,}")


class Api:
    """The parts every route shares, one set per process."""

    def __init__(
        self,
        store: Store,
        cfg: HttpConfig,
        hostname: str,
        metrics: Metrics,
        lifecycle: Lifecycle,
        guard: AuthGuard | None = None,
        door: Door | None = None,
        domains: DomainAdmin | None = None,
        hooks: WebhookAdmin | None = None,
        shared: Path | None = None,  # the server's shared limits (shared.py), if any
        capture: bool = False,  # delivery.mode = "capture": the dashboard lists captured mail
        grants: GrantAdmin | None = None,  # None: no Nylas routes (/v3/grants...)
        mailboxes: MailboxReader | None = None,  # the synced mailboxes the Nylas routes read
    ) -> None:
        self.store, self.cfg, self.metrics, self.lifecycle = store, cfg, metrics, lifecycle
        # without the app's door: one of its own, counting into this process's metrics
        self.door = door or Door(store, hostname, cfg.max_recipients, count=metrics.count_accepted)
        self.auth = Auth(store, cfg, guard or AuthGuard(), lifecycle, shared)
        self.idempotency = Idempotency(store)
        self.domains = domains  # None: no /v1/domains routes (a process without a key box)
        self.hooks = hooks  # None: no /v1/webhooks routes
        self.capture = capture
        self.grants, self.mailboxes = grants, mailboxes


def create_api(api: Api) -> Direct:
    app = FastAPI(
        title="mailgate",
        version="0.1.0",
        description="Send mail with one HTTP request; every 202 means committed to disk.",
        docs_url=None,  # ours below: Swagger UI from mailgate's own copy, not a CDN
        redoc_url=None,  # ReDoc would load from a CDN too
    )

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        return rejected(api.metrics, exc)

    async def invalid_query(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return rejected(api.metrics, query_error(exc))

    app.add_exception_handler(ApiError, refused)
    app.add_exception_handler(StoreError, refused)
    app.add_exception_handler(RequestError, refused)
    app.add_exception_handler(RequestValidationError, invalid_query)
    sends = send.Send(api.auth, api.idempotency, api.door, api.store, api.cfg)
    app.include_router(send.router(sends))
    app.include_router(messages.router(messages.Messages(api.auth, api.store)))
    app.include_router(events.router(events.Events(api.auth, api.store)))
    app.include_router(suppressions.router(suppressions.Suppressions(api.auth, api.store)))
    app.include_router(keys.router(keys.Keys(api.auth, api.store)))
    if api.hooks is not None:
        app.include_router(webhooks.router(webhooks.Webhooks(api.auth, api.hooks)))
    if api.domains is not None:
        app.include_router(domains.router(domains.Domains(api.auth, api.domains)))
    app.include_router(health.router(health.Health(api.lifecycle, api.store, api.metrics)))
    if api.grants is not None:  # before the vendors: /v3/grants/... is Nylas'
        app.include_router(nylas.router(nylas.Nylas(sends, api.store, api.grants, api.mailboxes)))
    vendor_routers = vendors.routers(sends, api.store)
    for router in vendor_routers:
        app.include_router(router)
    add_docs(app)
    # the dashboard; its sessions sealed with the server's secret box (the domains')
    box = api.domains.box if api.domains is not None else None
    app.mount(
        "/ui",
        dashboard(api.store, api.auth, api.lifecycle, box, api.hooks, api.domains, api.capture),
    )
    with_bodies(app)
    app.add_middleware(Timing, histogram=api.metrics.latency)
    hot: dict[tuple[str, str], Handler] = {
        ("POST", "/v1/messages"): sends.send,
        ("POST", "/v1/messages/batch"): sends.batch,
    }
    patterned: list[tuple[str, re.Pattern[str], str, Callable[..., Awaitable[Response]]]] = []
    taken: set[str] = set()
    for route in (r for router in vendor_routers for r in router.routes):
        if not isinstance(route, APIRoute) or route.path not in vendors.SENDS - taken:
            continue
        if "POST" not in (route.methods or ()):
            continue
        taken.add(route.path)  # the first route for a path answers it, as in FastAPI
        if route.param_convertors:  # Mailgun's /v3/{domain}/messages
            patterned.append(("POST", route.path_regex, route.path, route.endpoint))
        else:
            hot[("POST", route.path)] = route.endpoint
    return Direct(app, hot, api.metrics, patterned)


def with_bodies(app: FastAPI) -> None:
    """Add the schemas of the bodies the send routes parse by hand to the components."""
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(body_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class Direct:
    """The hot POST routes called straight from ASGI, past FastAPI's routing layers
    (dependency solving, query parsing, telemetry: most of each request's time). The
    FastAPI app still documents them and serves everything else."""

    def __init__(
        self,
        app: FastAPI,
        routes: dict[tuple[str, str], Handler],
        metrics: Metrics,
        patterned: Sequence[
            tuple[str, re.Pattern[str], str, Callable[..., Awaitable[Response]]]
        ] = (),
    ) -> None:
        self.app, self.routes, self.metrics = app, routes, metrics
        # (method, path pattern, route template, handler taking the path's parameters)
        self.patterned = patterned

    def __getattr__(self, name: str) -> Any:  # openapi(), routes, state: the FastAPI app's
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler: Callable[..., Awaitable[Response]] | None = None
        params: dict[str, str] = {}
        if scope["type"] == "http":
            if "//" in scope["path"]:  # an SDK's base URL with a trailing slash: "//emails"
                scope = {**scope, "path": REPEATED_SLASHES.sub("/", scope["path"])}
            label = scope["path"]
            handler = self.routes.get((scope["method"], label))
            if handler is None and scope["method"] == "POST":
                for method, pattern, template, endpoint in self.patterned:
                    if (found := pattern.match(scope["path"])) and method == scope["method"]:
                        handler, params, label = endpoint, found.groupdict(), template
                        break
        if handler is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            response = await handler(Request(scope, receive), **params)
        except (ApiError, StoreError) as exc:
            response = rejected(self.metrics, exc)
        except Exception:  # a bug: say so in JSON, keep the details for the log
            log.exception("http: %s %s failed", scope["method"], scope["path"])
            response = error_response(ApiError(500, "internal", "Internal error"))
        await response(scope, receive, send)
        self.metrics.latency.labels(label).observe(time.perf_counter() - started)


class Timing:
    """Pure ASGI middleware recording latency per route (BaseHTTPMiddleware, with its
    anyio task group per request, cost a third of the request time here)."""

    def __init__(self, app: Any, histogram: Any) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            self.histogram.labels(getattr(route, "path", "other")).observe(
                time.perf_counter() - started
            )
