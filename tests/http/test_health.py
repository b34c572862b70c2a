"""/readyz reads the process's lifecycle: starting and draining are 503, each saying which."""

from __future__ import annotations

import json
from typing import Any

import httpx

from mailgate.http.health import Health
from mailgate.lifecycle import Lifecycle, Phase
from mailgate.metrics import Metrics
from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import Dialog


class Pinged:
    """A store that can always commit: only ping() is asked."""

    async def ping(self) -> None:
        return None


async def ready(lifecycle: Lifecycle) -> tuple[int, dict[str, Any]]:
    store: Any = Pinged()
    answer = await Health(lifecycle, store, Metrics.create()).readyz()
    return answer.status_code, json.loads(bytes(answer.body))


async def test_readyz_follows_the_phase() -> None:
    lifecycle = Lifecycle(Phase.STARTING)
    status, body = await ready(lifecycle)
    assert (status, body["error"]["code"]) == (503, "starting")
    lifecycle.mark_ready()
    assert await ready(lifecycle) == (200, {"status": "ready"})
    lifecycle.drain()
    status, body = await ready(lifecycle)
    assert (status, body["error"]["code"]) == (503, "shutting_down")


def test_a_draining_server_refuses_new_requests(server: RunningServer) -> None:
    server.app.lifecycle.drain()  # one lifecycle for both ingresses
    r = httpx.post(
        f"{server.http_url}/v1/messages",
        json={"from": "a@example.org", "to": "b@example.com", "text": "x"},
        headers={"Authorization": f"Bearer {server.send_key}"},
    )
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["error"]["code"] == "shutting_down"
    assert httpx.get(f"{server.http_url}/readyz").json()["error"]["code"] == "shutting_down"
    with Dialog(server.smtp_port) as d:  # the relay drains with it
        assert d.read_reply() == (421, "421 4.3.2 Service shutting down, try later")
