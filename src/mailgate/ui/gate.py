"""Who may see a dashboard page: the signed-in admin key of a request, re-read from the
store on every request (a revoked key's session ends at once, in every process), and
the checks a POST passes before it changes anything (its session's CSRF token, an
Origin, if sent, of this server)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.lifecycle import Lifecycle
from mailgate.models import ApiKey, Scope
from mailgate.store import Store
from mailgate.ui.render import Pages
from mailgate.ui.session import SESSION_COOKIE, Session, Sessions

PREFIX = "/ui"
MAX_FORM_FIELDS = 20  # the largest form (a new key) has fewer
MAX_FORM_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Visitor:
    """A signed-in request: its session and the admin key it was signed in with."""

    session: Session
    key: ApiKey


Handler = Callable[[Request, Visitor], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class Gate:
    def __init__(self, store: Store, sessions: Sessions, pages: Pages, lifecycle: Lifecycle):
        self.store, self.sessions, self.pages, self.lifecycle = store, sessions, pages, lifecycle

    async def visitor(self, request: Request) -> Visitor | None:
        session = self.sessions.open(request.cookies.get(SESSION_COOKIE), time.time())
        if session is None:
            return None
        found = await self.store.get_key(session.key_id)  # one primary-key read
        if found is None or not found[0].active or not found[0].has(Scope.ADMIN):
            return None
        return Visitor(session, found[0])

    def signed_in(self, handler: Handler) -> Endpoint:
        """The endpoint of a page only an admin sees: to sign-in without a session (a
        POST: 403, it would change something), and a POST's form checked first."""

        async def endpoint(request: Request) -> Response:
            if self.lifecycle.draining:
                return self.error(503, "The server is shutting down; try again shortly.")
            visitor = await self.visitor(request)
            if request.method == "POST":
                problem = await self.post_problem(request, visitor)
                if problem is not None:
                    return self.error(403, problem)
            if visitor is None:
                return to_signin(request)
            return await handler(request, visitor)

        return endpoint

    async def post_problem(self, request: Request, visitor: Visitor | None) -> str | None:
        """Why this POST is refused (403), or None."""
        if not same_origin(request):
            return "This form was sent from another site."
        if visitor is None:
            return "Your session has ended: sign in again."
        form = await read_form(request)
        if form is None or not visitor.session.csrf_ok(field(form, "csrf")):
            return "This form has expired or was not sent from the dashboard: reload the page."
        return None

    def error(self, status: int, message: str, visitor: Visitor | None = None) -> Response:
        return self.pages.render(
            "error.html", status=status, message=message, visitor=visitor, nav=""
        )


async def read_form(request: Request) -> FormData | None:
    """The form of a POST (parsed once: Starlette keeps it for the handler), or None when
    it is not a small url-encoded form."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:  # browsers always send it
        return None
    try:
        return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    except Exception:  # a malformed body: refused like a missing token
        return None


def field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def same_origin(request: Request) -> bool:
    """A browser says where a POST comes from; one from another origin is refused even
    before its token is read (SameSite=Strict cookies already stay home)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # "null": a sandboxed frame or a privacy redirect
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def local_path(path: str | None, default: str = f"{PREFIX}/overview") -> str:
    """A place in the dashboard to go back to; anything else (another host, a scheme,
    `//`, a backslash) is the default, so no link leads off the dashboard."""
    if not path or not path.startswith(f"{PREFIX}/") or "\\" in path or path.startswith("//"):
        return default
    if any(c.isspace() or ord(c) < 32 for c in path):
        return default
    return path


def to_signin(request: Request) -> Response:
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/signin?next={quote(local_path(back))}", status_code=303)
