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

from mailgate.http.auth import Auth
from mailgate.lifecycle import Lifecycle
from mailgate.secretbox import SecretBox
from mailgate.store import Store
from mailgate.ui.gate import PREFIX, Gate, Visitor
from mailgate.ui.headers import SecureHeaders
from mailgate.ui.keys import KeysPage
from mailgate.ui.messages import MessagePages
from mailgate.ui.queue import QueuePage
from mailgate.ui.render import Pages
from mailgate.ui.session import Sessions
from mailgate.ui.signin import SignIn

STATIC = Path(__file__).parent / "static"


def dashboard(store: Store, auth: Auth, lifecycle: Lifecycle, box: SecretBox | None) -> Any:
    """The /ui application. `box`: the server's secret box, which seals the session
    cookies (None: a key of this process's own)."""
    gate = Gate(store, Sessions(box), Pages(), lifecycle)
    signin = SignIn(gate, auth)
    messages = MessagePages(gate, store)
    queue = QueuePage(gate, store)
    keys = KeysPage(gate, auth, store)
    page = gate.signed_in

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/messages", 303)

    async def signed_out(request: Request, visitor: Visitor) -> Response:
        return await signin.sign_out(request, visitor)

    routes = [
        Route("/", home),
        Route("/signin", signin.form, methods=["GET"]),
        Route("/signin", signin.sign_in, methods=["POST"]),
        Route("/signout", page(signed_out), methods=["POST"]),
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
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return SecureHeaders(Starlette(routes=routes))
