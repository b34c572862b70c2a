"""How the HTTP API says no: `ApiError` and the JSON it is answered with.

MailgateError (mailgate.errors)
└── ApiError     a request refused with a status, a code and the field at fault:
                 {"error": {"code", "message", "field"}}

Field paths name what the client sent: ("attachments", 2, "content") is
`attachments[2].content`; a batch item's paths start with `messages[i]`.
"""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mailgate.errors import MailgateError, RequestError
from mailgate.ingress.accept import Refusal, Rule
from mailgate.metrics import Metrics

BEARER = {"WWW-Authenticate": 'Bearer realm="mailgate"'}
# on answers that show a secret once (a new API key, a webhook signing secret): no cache
# or proxy on the way may keep a copy
NO_STORE = "no-store"


class ApiError(MailgateError):
    """An error answered as {"error": {"code", "message", "field"}}."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def item(self) -> dict[str, Any]:
        """The error as one batch item states it (with its status)."""
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "field": self.field,
        }


def error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"code": e.code, "message": e.message, "field": e.field}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


# How a refused request on a resource (domains, webhooks) reads over HTTP.
_REQUEST_STATUS = {"already_exists": 409, "not_found": 404, "conflict": 409, "invalid_field": 422}


def request_error(e: RequestError) -> ApiError:
    return ApiError(_REQUEST_STATUS.get(e.code, 422), e.code, e.message, e.field)


def rejected(metrics: Metrics, exc: Exception) -> JSONResponse:
    """The JSON answer to an ApiError, RequestError or StoreError a handler raised,
    counted by code."""
    if isinstance(exc, RequestError):
        exc = request_error(exc)
    if not isinstance(exc, ApiError):  # the store could not commit or read
        exc = ApiError(
            503, "unavailable", "Storage unavailable; retry later", headers={"Retry-After": "5"}
        )
    metrics.rejected.labels(exc.code).inc()
    return error_response(exc)


def shutting_down() -> ApiError:
    return ApiError(
        503, "shutting_down", "Server is shutting down, retry", headers={"Retry-After": "5"}
    )


def unavailable() -> ApiError:
    return ApiError(
        503,
        "unavailable",
        "Storage cannot commit right now; retry later",
        headers={"Retry-After": "5"},
    )


def invalid(message: str, field: str | None) -> ApiError:
    """422 naming the field at fault."""
    return ApiError(422, "invalid_field", message, field)


def field_path(loc: tuple[int | str, ...]) -> str:
    """("attachments", 2, "content") -> "attachments[2].content"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + ("from" if part == "from_" else str(part))
    return out


def validation_error(exc: pydantic.ValidationError, prefix: str = "") -> ApiError:
    """A body that is not JSON (400), or the first field pydantic refused (422)."""
    first = exc.errors(include_url=False)[0]
    if first["type"] in ("json_invalid", "json_type") or first["type"].startswith("recursion"):
        return ApiError(400, "malformed_json", f"Request body is not valid JSON: {first['msg']}")
    path = field_path(tuple(first["loc"]))
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "Unknown field"
    return invalid(msg, path or None)


def query_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's own 422 (query and path parameters) in the API's error shape."""
    first = exc.errors()[0]
    loc = tuple(first.get("loc", ()))
    path = field_path(loc[1:] if loc[:1] in (("query",), ("path",)) else loc)
    return invalid(str(first.get("msg", "Invalid")), path or None)


# How the door's refusals read over HTTP: (status, error code) per rule.
_REFUSED = {
    Rule.SENDER: (403, "sender_not_allowed"),
    Rule.DOMAIN: (403, "domain_not_verified"),
    Rule.RECIPIENTS: (422, "invalid_field"),
    Rule.UNAVAILABLE: (503, "unavailable"),
}


def refusal_error(refusal: Refusal, *, raw: bool = False, prefix: str = "") -> ApiError:
    """The door's refusal as an HTTP error; its reason is the message and its field is
    named as the request names it (a JSON path, or raw.<Header> for a raw message)."""
    if refusal.rule is Rule.UNAVAILABLE:
        return unavailable()
    status, code = _REFUSED[refusal.rule]
    if refusal.field == "recipients":
        name = "to"
    elif refusal.field == "sender" or (not raw and refusal.field == "From"):
        name = "from"
    else:
        name = f"raw.{refusal.field}"
    return ApiError(status, code, refusal.reason, f"{prefix}.{name}" if prefix else name)
