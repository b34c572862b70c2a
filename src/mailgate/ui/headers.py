"""The headers every dashboard answer carries, and the stricter ones of a message's HTML.

The dashboard's own pages load only what mailgate serves (no inline script or style, no
other origin) and are never framed. A message's HTML is the sender's, so it is an
attacker's: it is shown only inside a sandboxed frame (no scripts, an opaque origin, no
forms, no popups) and served with a policy that loads nothing but inline styles and
`data:` images, so it can neither run nor call home (no tracking pixel, no remote font).
"""

from __future__ import annotations

import time
from typing import Any

PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-src 'self'",  # the sandboxed frame of a message's HTML
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
# A message's HTML: nothing loads but its inline styles and data: images; `sandbox`
# keeps it in an opaque origin with scripts off even when opened outside the frame.
EMAIL_POLICY = "; ".join(
    (
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
        "sandbox",
    )
)
# Raw bytes and attachments: shown as text or downloaded, never run.
INERT_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"

COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make a form's Origin "null"
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)


class SecureHeaders:
    """Pure ASGI wrapper of the dashboard: the headers above on every answer (a route's
    own value of one wins), `no-store` on every page (they
    show mail and keys), and Server-Timing: the milliseconds from the request to the
    answer's start, which for a page is its whole render (bench/dashboard.py reads it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        static = scope["path"].startswith("/ui/static/")

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = [
                    (name, value)
                    for name, value in (
                        *COMMON,
                        (b"content-security-policy", PAGE_POLICY.encode()),
                        (b"x-frame-options", b"DENY"),
                    )
                    if name not in names
                ]
                if not static and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                took = (time.perf_counter() - started) * 1000
                extra.append((b"server-timing", f"app;dur={took:.1f}".encode()))
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, with_headers)
