"""The dashboard as one ASGI application, mounted at /ui by http/app.py: its routes, its
static files, and the headers every answer carries (headers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mailgate.domains.manage import DomainAdmin
from mailgate.events.endpoints import WebhookAdmin
from mailgate.http.auth import Auth
from mailgate.lifecycle import Lifecycle
from mailgate.secretbox import SecretBox
from mailgate.store import Store
from mailgate.ui.captured import CapturedPage
from mailgate.ui.domains import DomainsPage
from mailgate.ui.gate import PREFIX, Gate, Visitor
from mailgate.ui.headers import SecureHeaders
from mailgate.ui.keys import KeysPage
from mailgate.ui.messages import MessagePages
from mailgate.ui.overview import OverviewPage
from mailgate.ui.queue import QueuePage
from mailgate.ui.render import Pages
from mailgate.ui.session import Sessions
from mailgate.ui.signin import SignIn
from mailgate.ui.suppressions import SuppressionsPage
from mailgate.ui.webhooks import WebhooksPage

STATIC = Path(__file__).parent / "static"


def dashboard(
    store: Store,
    auth: Auth,
    lifecycle: Lifecycle,
    box: SecretBox | None,
    hooks: WebhookAdmin | None = None,
    domains: DomainAdmin | None = None,
    capture: bool = False,
) -> Any:
    """The /ui application. `box`: the server's secret box, which seals the session
    cookies (None: a key of this process's own). `hooks`, `domains`: the API's own
    webhook and domain administration (None: the pages say they are not served).
    `capture`: delivery.mode = "capture" (the captured mail page is in the menu)."""
    pages = Pages()
    pages.env.globals["capture"] = capture
    gate = Gate(store, Sessions(box), pages, lifecycle)
    signin = SignIn(gate, auth)
    messages = MessagePages(gate, store)
    queue = QueuePage(gate, store)
    keys = KeysPage(gate, auth, store)
    overview = OverviewPage(gate, store)
    suppressions = SuppressionsPage(gate, store)
    webhooks = WebhooksPage(gate, hooks)
    sending = DomainsPage(gate, store, domains)
    captured = CapturedPage(gate, store, capture)
    page = gate.signed_in

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/overview", 303)

    async def signed_out(request: Request, visitor: Visitor) -> Response:
        return await signin.sign_out(request, visitor)

    routes = [
        Route("/", home),
        Route("/signin", signin.form, methods=["GET"]),
        Route("/signin", signin.sign_in, methods=["POST"]),
        Route("/signout", page(signed_out), methods=["POST"]),
        Route("/overview", page(overview.show), methods=["GET"]),
        Route("/messages", page(messages.search), methods=["GET"]),
        Route("/messages/{message_id}", page(messages.one), methods=["GET"]),
        Route("/messages/{message_id}/html", page(messages.html), methods=["GET"]),
        Route("/messages/{message_id}/raw", page(messages.raw), methods=["GET"]),
        Route(
            "/messages/{message_id}/attachments/{index:int}",
            page(messages.attachment),
            methods=["GET"],
        ),
        Route("/messages/{message_id}/retry", page(messages.retry), methods=["POST"]),
        Route("/messages/{message_id}/cancel", page(messages.cancel), methods=["POST"]),
        Route("/queue", page(queue.show), methods=["GET"]),
        Route("/keys", page(keys.show), methods=["GET"]),
        Route("/keys", page(keys.create), methods=["POST"]),
        Route("/keys/{key_id}/revoke", page(keys.revoke), methods=["POST"]),
        Route("/suppressions", page(suppressions.show), methods=["GET"]),
        Route("/suppressions", page(suppressions.add), methods=["POST"]),
        Route("/suppressions/remove", page(suppressions.remove), methods=["POST"]),
        Route("/webhooks", page(webhooks.show), methods=["GET"]),
        Route("/webhooks/replay", page(webhooks.replay), methods=["POST"]),
        Route("/captured", page(captured.show), methods=["GET"]),
        Route("/domains", page(sending.show), methods=["GET"]),
        Route("/domains", page(sending.add), methods=["POST"]),
        Route("/domains/{name}/verify", page(sending.verify), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return SecureHeaders(Starlette(routes=routes))
