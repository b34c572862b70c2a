"""Sign in with an admin API key, sign out.

The key is checked by the API's own code (`Auth.key_for`): the same failed-login guard
(a growing delay, then a lockout per address and per key), the same https-only rule
for keys from other machines, the same answer for an unknown, wrong, revoked or locked
key. A good key becomes a session cookie (session.py); the key itself is kept nowhere.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailgate.http.auth import Auth
from mailgate.http.errors import ApiError
from mailgate.models import Scope
from mailgate.ui.gate import PREFIX, Gate, Visitor, field, local_path, read_form, same_origin
from mailgate.ui.session import (
    COOKIE_PATH,
    SESSION_COOKIE,
    SESSION_SECONDS,
    SIGNIN_COOKIE,
    SIGNIN_SECONDS,
)

MAX_KEY_LENGTH = 200  # a secret is 99 characters; a longer paste is no key

# what the sign-in form says to each refusal of Auth.key_for
REFUSALS = {
    "unauthorized": "That key is not valid (unknown, wrong or revoked).",
    "forbidden": "That key lacks the admin scope: the dashboard needs an admin key.",
    "too_many_auth_failures": "Too many failed sign-ins from your address: wait and retry.",
    "https_required": "Keys are accepted over HTTPS only from your address (http.tls).",
    "rate_limited": "Too many requests for this key: wait a moment and retry.",
    "shutting_down": "The server is shutting down; try again shortly.",
}


class SignIn:
    def __init__(self, gate: Gate, auth: Auth) -> None:
        self.gate, self.auth = gate, auth

    async def form(self, request: Request) -> Response:
        if await self.gate.visitor(request) is not None:
            return RedirectResponse(local_path(request.query_params.get("next")), 303)
        return self._form(request, 200, None, back=local_path(request.query_params.get("next")))

    async def sign_in(self, request: Request) -> Response:
        form = await read_form(request)
        now = time.time()
        if form is None or not same_origin(request):
            return self._form(request, 403, "This form was not sent from the dashboard.")
        if not self.gate.sessions.signin_ok(
            request.cookies.get(SIGNIN_COOKIE), field(form, "csrf"), now
        ):
            return self._form(request, 403, "This form has expired: try again.")
        back = local_path(field(form, "next"))
        secret = (field(form, "key") or "").strip()[:MAX_KEY_LENGTH]
        if not secret:
            return self._form(request, 400, "Enter an API key.", back=back)
        try:
            key = await self.auth.key_for(request, Scope.ADMIN, secret=secret)
        except ApiError as exc:
            message = REFUSALS.get(exc.code, exc.message)
            return self._form(request, exc.status, message, exc.headers.get("Retry-After"), back)
        session = self.gate.sessions.new(key.id, now)
        answer = RedirectResponse(back, 303)
        answer.set_cookie(
            SESSION_COOKIE,
            self.gate.sessions.seal(session),
            max_age=SESSION_SECONDS,
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        answer.delete_cookie(
            SIGNIN_COOKIE,
            path=f"{PREFIX}/signin",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return answer

    async def sign_out(self, request: Request, visitor: Visitor) -> Response:
        answer = RedirectResponse(f"{PREFIX}/signin", 303)
        answer.delete_cookie(
            SESSION_COOKIE,
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return answer

    def _form(
        self,
        request: Request,
        status: int,
        error: str | None,
        retry_after: str | None = None,
        back: str = f"{PREFIX}/overview",
    ) -> Response:
        """The sign-in page with a fresh token, and the cookie that vouches for it."""
        token, cookie = self.gate.sessions.signin_token()
        answer = self.gate.pages.render(
            "signin.html",
            status=status,
            headers={"Retry-After": retry_after} if retry_after else None,
            csrf=token,
            error=error,
            next=back,
            visitor=None,
        )
        answer.set_cookie(
            SIGNIN_COOKIE,
            cookie,
            max_age=SIGNIN_SECONDS,
            path=f"{PREFIX}/signin",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return answer
