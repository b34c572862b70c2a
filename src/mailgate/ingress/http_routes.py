"""The routes of the HTTP API and its OpenAPI document; handlers are thin over `Api`."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pydantic
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest

from mailgate.errors import StoreError
from mailgate.ingress import http_models as m
from mailgate.ingress.accept import Refusal
from mailgate.ingress.http_api import (
    Api,
    ApiError,
    accepted_dict,
    client_of,
    error_response,
    field_path,
    mailbox,
    refusal_error,
    shutting_down,
    validation_error,
)
from mailgate.models import MessageQuery, RecipientStatus, Scope

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": m.ErrorOut, "description": text}
    for code, text in [
        (400, "Malformed JSON"),
        (401, "Missing or invalid API key"),
        (403, "Scope or sender domain not allowed"),
        (404, "No such message"),
        (409, "Idempotency-Key reused with another request"),
        (413, "Body too large"),
        (415, "Wrong Content-Type"),
        (422, "A field is invalid; `field` names it"),
        (429, "Rate limited; see Retry-After"),
        (503, "Storage unavailable; see Retry-After"),
    ]
}
_SCHEMAS: dict[str, Any] = {}
log = logging.getLogger("mailgate.http")
MAX_UNIX_TIME = (2**48 - 1) / 1000  # the last millisecond a message id can carry


def _body_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """openapi_extra for a JSON body parsed by hand, with its schema in components."""
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    _SCHEMAS.update(schema.pop("$defs", {}))
    _SCHEMAS[model.__name__] = schema
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def create_api(api: Api) -> Direct:
    app = FastAPI(
        title="mailgate",
        version="0.1.0",
        description="Send mail with one HTTP request; every 202 means committed to disk.",
    )

    @app.exception_handler(ApiError)
    @app.exception_handler(StoreError)
    async def _rejected(request: Request, exc: Exception) -> JSONResponse:
        return rejected(api, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return rejected(api, query_error(exc))

    @app.post(
        "/v1/messages",
        status_code=202,
        response_model=m.Accepted,
        responses=ERRORS,
        openapi_extra=_body_schema(m.SendRequest),
        summary="Send one message",
    )
    async def send(request: Request) -> Response:
        key, body, idem, replay = await api.begin_post(request)
        if replay is not None:
            return replay
        req = parse_json(m.SendRequest, body)
        submission = await api.draft_message(req, key, client_of(request))
        return await api.commit_one(submission, idem)

    @app.post(
        "/v1/messages/batch",
        status_code=202,
        response_model=m.BatchResult,
        responses=ERRORS,
        openapi_extra=_body_schema(m.BatchRequest),
        summary="Send up to 500 messages",
    )
    async def batch(request: Request) -> Response:
        key, body, idem, replay = await api.begin_post(request)
        if replay is not None:
            return replay
        req = parse_json(m.BatchRequest, body)
        if len(req.messages) > api.cfg.batch_max:
            raise ApiError(
                422, "invalid_field", f"At most {api.cfg.batch_max} messages", "messages"
            )
        results: list[dict[str, Any]] = []
        accepted = []
        client = client_of(request)
        for i, item in enumerate(req.messages):
            prefix = f"messages[{i}]"
            try:
                one = m.SendRequest.model_validate(item)
                submission = await api.draft_message(one, key, client, prefix)
            except pydantic.ValidationError as exc:
                err = validation_error(exc, prefix)
                results.append({"index": i, "error": _err(err)})
                continue
            except ApiError as err:
                results.append({"index": i, "error": _err(err)})
                continue
            message = api.door.prepare(submission)  # every rule but commit, per message
            if isinstance(message, Refusal):
                results.append({"index": i, "error": _err(refusal_error(message, prefix=prefix))})
                continue
            accepted.append(message)
            results.append({"index": i, **accepted_dict(message)})
        if not accepted:
            first = results[0]["error"]
            error = {
                "code": "invalid_batch",
                "message": "No message in the batch is valid",
                "field": first["field"],
            }
            return JSONResponse(
                {"error": error, "accepted": 0, "rejected": len(results), "results": results},
                status_code=422,
            )
        out = json.dumps(
            {
                "accepted": len(accepted),
                "rejected": len(results) - len(accepted),
                "results": results,
            }
        )
        return await api.commit_many(accepted, out, idem)

    @app.post(
        "/v1/messages/raw",
        status_code=202,
        response_model=m.Accepted,
        responses=ERRORS,
        openapi_extra=_body_schema(m.RawRequest),
        summary="Send a complete RFC 5322 message (JSON, or message/rfc822 with ?from=&to=)",
    )
    async def send_raw(request: Request) -> Response:
        key, body, idem, replay = await api.begin_post(
            request, ("application/json", "message/rfc822")
        )
        if replay is not None:
            return replay
        if request.headers.get("content-type", "").startswith("message/rfc822"):
            params = request.query_params
            envelope = {
                "raw": base64.b64encode(body).decode(),
                "from": params.get("from", ""),
                "to": params.getlist("to"),
            }
            req = parse_json(m.RawRequest, json.dumps(envelope).encode())
        else:
            req = parse_json(m.RawRequest, body)
        to = [address for _, address in map(mailbox, req.to)]  # addr-specs, never as given
        submission = api.raw_message(
            base64.b64decode(req.raw), req.from_, to, key, client_of(request), tuple(req.tags)
        )
        return await api.commit_one(submission, idem)

    @app.get(
        "/v1/messages",
        response_model=m.MessageList,
        responses=ERRORS,
        summary="List messages, newest first",
    )
    async def list_messages(
        request: Request,
        status: RecipientStatus | None = None,
        recipient: str | None = Query(None, max_length=320),
        tag: str | None = Query(None, max_length=100),
        since: float | None = Query(None, description="Unix time", allow_inf_nan=False),
        until: float | None = Query(None, description="Unix time", allow_inf_nan=False),
        cursor: str | None = Query(None, pattern=r"^[0-9A-Z]{26}$"),
        limit: int = Query(50, ge=1, le=500),
    ) -> m.MessageList:
        key = await api.key_for(request, Scope.READ)
        query = MessageQuery(
            status=status,
            recipient=recipient,
            tag=tag,
            since=None if since is None else min(since, MAX_UNIX_TIME),
            until=None if until is None else min(until, MAX_UNIX_TIME),
            cursor=cursor,
            limit=limit,
            api_key_id=None if key.has(Scope.ADMIN) else key.id,
        )
        found = await api.store.list_messages(query)
        data = [await api.message_out(x, with_events=False) for x in found]
        return m.MessageList(data=data, next_cursor=found[-1].id if len(found) == limit else None)

    @app.get(
        "/v1/messages/{message_id}",
        response_model=m.MessageOut,
        responses=ERRORS,
        summary="One message with its recipients and event timeline",
    )
    async def get_message(request: Request, message_id: str) -> m.MessageOut:
        key = await api.key_for(request, Scope.READ)
        message = await api.visible_message(message_id, key)
        return await api.message_out(message, with_events=True)

    @app.get(
        "/v1/messages/{message_id}/raw",
        responses=ERRORS,
        response_class=Response,
        summary="The stored RFC 5322 bytes",
    )
    async def get_raw(request: Request, message_id: str) -> Response:
        key = await api.key_for(request, Scope.READ)
        message = await api.visible_message(message_id, key)
        raw = await api.store.get_raw(message.id)
        return Response(raw or b"", media_type="message/rfc822")

    @app.post(
        "/v1/messages/{message_id}/cancel",
        response_model=m.MessageOut,
        responses=ERRORS,
        summary="Cancel recipients not yet delivered",
    )
    async def cancel(request: Request, message_id: str) -> m.MessageOut:
        key = await api.key_for(request, Scope.SEND)
        message = await api.visible_message(message_id, key)
        await api.store.cancel(message.id, time.time())
        return await api.message_out(message, with_events=True)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The store can commit", responses={503: ERRORS[503]})
    async def readyz() -> JSONResponse:
        if api.draining:
            return error_response(shutting_down())
        if api.starting:
            return error_response(
                ApiError(
                    503,
                    "starting",
                    "Not every ingress process is listening yet",
                    headers={"Retry-After": "1"},
                )
            )
        try:
            await api.store.ping()
        except StoreError:
            return error_response(
                ApiError(503, "unavailable", "Storage cannot commit", headers={"Retry-After": "5"})
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics() -> Response:
        try:
            for status, n in (await api.store.status_counts()).items():
                api.metrics.queue_depth.labels(status).set(n)
        except StoreError:
            pass
        return Response(
            generate_latest(api.metrics.registry), media_type="text/plain; version=0.0.4"
        )

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(Timing, histogram=api.metrics.latency)
    hot: dict[tuple[str, str], Handler] = {
        ("POST", "/v1/messages"): send,
        ("POST", "/v1/messages/batch"): batch,
    }
    return Direct(app, hot, api)


Handler = Callable[[Request], Awaitable[Response]]


def rejected(api: Api, exc: Exception) -> JSONResponse:
    """The JSON answer to an ApiError or StoreError a handler raised, counted by code."""
    if not isinstance(exc, ApiError):  # the store could not commit or read
        exc = ApiError(
            503, "unavailable", "Storage unavailable; retry later", headers={"Retry-After": "5"}
        )
    api.metrics.rejected.labels(exc.code).inc()
    return error_response(exc)


class Direct:
    """The hot POST routes called straight from ASGI, past FastAPI's routing layers
    (dependency solving, query parsing, telemetry: most of each request's time). The
    FastAPI app still documents them and serves everything else."""

    def __init__(self, app: FastAPI, routes: dict[tuple[str, str], Handler], api: Api) -> None:
        self.app, self.routes, self.api = app, routes, api

    def __getattr__(self, name: str) -> Any:  # openapi(), routes, state: the FastAPI app's
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler = None
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
        if handler is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            response = await handler(Request(scope, receive))
        except (ApiError, StoreError) as exc:
            response = rejected(self.api, exc)
        except Exception:  # a bug: say so in JSON, keep the details for the log
            log.exception("http: %s %s failed", scope["method"], scope["path"])
            response = error_response(ApiError(500, "internal", "Internal error"))
        await response(scope, receive, send)
        self.api.metrics.latency.labels(scope["path"]).observe(time.perf_counter() - started)


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


T = TypeVar("T", bound=pydantic.BaseModel)


def parse_json(model: type[T], body: bytes) -> T:
    """The request model, or ApiError 400 (not JSON) / 422 (naming the field)."""
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def query_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's own 422 (query and path parameters) in the API's error shape."""
    first = exc.errors()[0]
    loc = tuple(first.get("loc", ()))
    path = field_path(loc[1:] if loc[:1] in (("query",), ("path",)) else loc)
    return ApiError(422, "invalid_field", str(first.get("msg", "Invalid")), path or None)


def _err(e: ApiError) -> dict[str, Any]:
    return {"status": e.status, "code": e.code, "message": e.message, "field": e.field}
