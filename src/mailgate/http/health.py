"""Is this process up, can it take mail, and what has it counted: /healthz, /readyz,
/metrics. None of them needs a key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest
from starlette.responses import Response

from mailgate.errors import StoreError
from mailgate.http.errors import ApiError, error_response, shutting_down
from mailgate.http.openapi import ERRORS
from mailgate.lifecycle import Lifecycle, Phase
from mailgate.metrics import Metrics
from mailgate.store import Store


class Health:
    def __init__(self, lifecycle: Lifecycle, store: Store, metrics: Metrics) -> None:
        self.lifecycle, self.store = lifecycle, store
        self._metrics = metrics  # `metrics` is the route (its name is in the OpenAPI ids)

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        # 503 while starting (serve's ingress children are not all listening yet: a
        # client that connects now stays on this process), draining, or unable to commit.
        # (No docstring: it would become the route's OpenAPI description.)
        if self.lifecycle.draining:
            return error_response(shutting_down())
        if self.lifecycle.phase is Phase.STARTING:
            return error_response(
                ApiError(
                    503,
                    "starting",
                    "Not every ingress process is listening yet",
                    headers={"Retry-After": "1"},
                )
            )
        try:
            await self.store.ping()
        except StoreError:
            return error_response(
                ApiError(503, "unavailable", "Storage cannot commit", headers={"Retry-After": "5"})
            )
        return JSONResponse({"status": "ready"})

    async def metrics(self) -> Response:
        try:
            for status, n in (await self.store.status_counts()).items():
                self._metrics.queue_depth.labels(status).set(n)
        except StoreError:
            pass
        return Response(
            generate_latest(self._metrics.registry), media_type="text/plain; version=0.0.4"
        )


def router(health: Health) -> APIRouter:
    r = APIRouter()
    r.add_api_route("/healthz", health.healthz, methods=["GET"], summary="The process is up")
    r.add_api_route(
        "/readyz",
        health.readyz,
        methods=["GET"],
        summary="The store can commit",
        responses={503: ERRORS[503]},
    )
    r.add_api_route(
        "/metrics",
        health.metrics,
        methods=["GET"],
        response_class=Response,
        summary="Prometheus metrics",
    )
    return r
