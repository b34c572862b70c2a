"""The dashboard's session: an admin key's sign-in, kept by the browser as a sealed cookie.

The cookie holds the key's id (never its secret), when the session ends and the
session's CSRF token, sealed with the server's secret box (Fernet: encrypted and
authenticated, secretbox.py), so every process and every node with the same key box
reads it and nobody else can make or read one. Nothing is kept server side: each
request re-reads the key by its id (one primary-key read), so a revoked key's sessions
end with it. A form carries the token; a POST whose token is not its session's is
refused (the synchronizer-token pattern, with the token kept in the sealed cookie).

Before sign-in a short-lived cookie of the same kind carries the sign-in form's token,
so the sign-in form is guarded too (login CSRF).
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet

from mailgate.errors import ConfigError
from mailgate.secretbox import SecretBox

SESSION_COOKIE = "mailgate_session"
SIGNIN_COOKIE = "mailgate_signin"
SESSION_SECONDS = 8 * 3600  # a working day; then sign in again
SIGNIN_SECONDS = 3600  # a sign-in form left open this long must be loaded again
COOKIE_PATH = "/ui"  # never sent to the API (/v1), which reads keys only from headers
PURPOSE = "mailgate-ui"  # a sealed session is told apart from any other sealed value


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str  # the admin key signed in with
    expires_at: float
    csrf: str  # the token every form of this session carries

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """Seals and opens the dashboard's cookies."""

    def __init__(self, box: SecretBox | None) -> None:
        # without the server's box (an Api built without domains): this process's own
        # key, so sessions last only as long as the process
        self.box = box or SecretBox(Fernet.generate_key())

    def new(self, key_id: str, now: float) -> Session:
        return Session(key_id, now + SESSION_SECONDS, secrets.token_urlsafe(32))

    def seal(self, session: Session) -> str:
        data = {"p": PURPOSE, "k": session.key_id, "e": session.expires_at, "c": session.csrf}
        return self.box.seal(json.dumps(data).encode())

    def open(self, cookie: str | None, now: float) -> Session | None:
        """The session in a cookie, or None: absent, forged, of another purpose or over."""
        data = self._unseal(cookie)
        if data is None or data.get("p") != PURPOSE:
            return None
        try:
            session = Session(str(data["k"]), float(data["e"]), str(data["c"]))
        except (KeyError, TypeError, ValueError):
            return None
        return session if session.expires_at > now else None

    def signin_token(self) -> tuple[str, str]:
        """(the sign-in form's token, the cookie that vouches for it)."""
        token = secrets.token_urlsafe(32)
        data = {"p": f"{PURPOSE}-signin", "c": token, "e": time.time() + SIGNIN_SECONDS}
        return token, self.box.seal(json.dumps(data).encode())

    def signin_ok(self, cookie: str | None, token: str | None, now: float) -> bool:
        data = self._unseal(cookie)
        if data is None or data.get("p") != f"{PURPOSE}-signin" or token is None:
            return False
        expected = str(data.get("c", ""))
        fresh = isinstance(data.get("e"), float) and data["e"] > now
        return fresh and hmac.compare_digest(token.encode(), expected.encode())

    def _unseal(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = json.loads(self.box.unseal(cookie))
        except (ConfigError, ValueError, UnicodeDecodeError):  # forged, cut, another key's
            return None
        return data if isinstance(data, dict) else None
