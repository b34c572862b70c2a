"""The API reference at /docs: Swagger UI from mailgate's own copy (ui/static/vendor/
swagger-ui/, pinned, with its licence), never from a CDN, so it works offline and tells
no third party who reads it. Its page loads nothing from elsewhere: its policy allows
this origin only, and the one inline script FastAPI writes by its hash."""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, swagger_ui_default_parameters
from starlette.requests import Request
from starlette.responses import HTMLResponse

SWAGGER = "/ui/static/vendor/swagger-ui"
SWAGGER_VERSION = "5.35.0"  # npm swagger-ui-dist; README.md beside the files


def docs_page(openapi_url: str, title: str) -> tuple[str, dict[str, str]]:
    """The page and its headers (its policy names its inline script by hash)."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - API reference",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js?v={SWAGGER_VERSION}",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css?v={SWAGGER_VERSION}",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        # no validator badge: it would send the spec's URL to validator.swagger.io
        swagger_ui_parameters={**swagger_ui_default_parameters, "validatorUrl": None},
    )
    html = bytes(page.body).decode()
    scripts = [
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    ]
    policy = "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' {' '.join(scripts)}",
            "style-src 'self' 'unsafe-inline'",  # Swagger UI styles its elements inline
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )
    headers = {
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }
    return html, headers


def add_docs(app: FastAPI) -> None:
    """/docs with the local Swagger UI (create the app with docs_url=None)."""
    html, headers = docs_page(app.openapi_url or "/openapi.json", app.title)

    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    app.add_route("/docs", docs, include_in_schema=False)
