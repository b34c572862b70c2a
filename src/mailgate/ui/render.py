"""Pages from Jinja2 templates (ui/templates/), every value escaped, and the small
formatting the templates share (times in UTC, sizes, replies)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse

from mailgate.models import Reply, id_time

TEMPLATES = Path(__file__).parent / "templates"


def when(t: float | None) -> str:
    """A time as the dashboard shows it: UTC to the second."""
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def id_when(message_id: str | None) -> str:
    """The time an id (a ULID) was made, as `when` shows it."""
    return when(id_time(message_id)) if message_id else ""


def size(n: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n //= 1024
    return str(n)


def reply(r: Reply | None) -> str:
    if r is None:
        return ""
    return f"{r.code} {r.enhanced + ' ' if r.enhanced else ''}{r.text}"


def compact(value: Any) -> str:
    """Details and metadata as one line of JSON."""
    if not value:
        return ""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False, default=str)


class Pages:
    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,  # every template is HTML: nothing reaches a page unescaped
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(when=when, id_when=id_when, size=size, reply=reply, compact=compact)

    def render(
        self,
        template: str,
        status: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=headers)
