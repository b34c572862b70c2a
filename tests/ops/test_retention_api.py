"""A purged message through the HTTP API: its raw bytes (and parsed view) answer 410
Gone naming retention, while the message, its recipients and events still answer."""

from __future__ import annotations

import time

import httpx

from mailgate import keys
from mailgate.config import RetentionConfig
from mailgate.models import Scope
from mailgate.retention import DAY, Retention
from tests.ingress.conftest import RunningServer, ca, server  # noqa: F401 (fixtures)


def test_a_purged_body_answers_410_and_the_message_stays(server: RunningServer) -> None:  # noqa: F811
    _, secret = server.call(lambda s: keys.create_key(s, "app", [Scope.SEND, Scope.READ]))
    auth = {"Authorization": f"Bearer {secret}"}
    sent = httpx.post(
        f"{server.http_url}/v1/messages",
        json={"from": "a@example.org", "to": "b@example.com", "subject": "s", "text": "t"},
        headers=auth,
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]
    url = f"{server.http_url}/v1/messages/{message_id}"
    assert httpx.get(f"{url}/raw", headers=auth).status_code == 200
    assert httpx.post(f"{url}/cancel", headers=auth).status_code == 200  # finished
    config = RetentionConfig(body_days=30, message_days=90)
    later = time.time() + 31 * DAY
    done = server.call(lambda s: Retention(s, config, clock=lambda: later).run_once())
    assert done.bodies == 1
    for view in ("raw", "parsed"):
        gone = httpx.get(f"{url}/{view}", headers=auth)
        assert gone.status_code == 410
        error = gone.json()["error"]
        assert error["code"] == "body_purged" and "retention" in error["message"]
    kept = httpx.get(url, headers=auth)
    assert kept.status_code == 200
    assert [r["status"] for r in kept.json()["recipients"]] == ["cancelled"]
