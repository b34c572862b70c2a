"""Webhooks sent from the outbox: signed deliveries a real receiver verifies with the
`standardwebhooks` library, and the retry, 410, timeout and disable stories with an
injectable clock, on every store backend."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from standardwebhooks import Webhook

from mailgate import keys
from mailgate.config import WebhooksConfig
from mailgate.events.endpoints import WebhookAdmin
from mailgate.events.webhooks import SCHEDULE, WebhookSender
from mailgate.models import ApiKey, NewMessage, Scope, Source
from mailgate.resolver import make_resolver
from mailgate.secretbox import SecretBox
from mailgate.store import Store
from tests.domains.conftest import INBOX, Mail
from tests.events.receiver import Receiver, receiver

HOOKS = {"allow_http": True, "allow_private_networks": ["127.0.0.0/8"], "timeout": 1.0}


@pytest.fixture
def got() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.mark.parametrize("mail", [{"webhooks": HOOKS}], indirect=True)
def test_outcomes_reach_the_receiver_signed(mail: Mail, got: Receiver) -> None:
    _, key = mail.server.call(lambda s: keys.create_key(s, "app", [Scope.SEND, Scope.READ]))
    auth = {"Authorization": f"Bearer {key}"}
    mail.zone.add("hooks.example.test", "A", "127.0.0.1")
    made = mail.http.post(
        "/v1/webhooks",
        headers=auth,
        json={
            "url": got.url("/in", host="hooks.example.test"),
            "events": ["message.delivered", "message.bounced"],
        },
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    sent = mail.http.post(
        "/v1/messages",
        headers=auth,
        json={
            "from": "a@example.org",
            "to": [f"ok@{INBOX}", f"reject-me@{INBOX}"],
            "subject": "s",
            "text": "t",
        },
    )
    assert sent.status_code == 202
    posts = got.wait(2)
    types = set()
    for post in posts:
        body = Webhook(secret).verify(post.body, post.headers)
        assert post.headers["webhook-id"] == body["id"]
        assert post.headers["host"] == f"hooks.example.test:{got.port}"
        assert body["data"]["message_id"] == sent.json()["id"]
        types.add(body["type"])
    assert types == {"message.delivered", "message.bounced"}
    ids = [e["id"] for e in mail.http.get("/v1/events", headers=auth).json()["data"]]
    assert {json.loads(p.body)["id"] for p in posts} <= set(ids)
    hook_id = made.json()["id"]
    listed = mail.http.get(f"/v1/webhooks/{hook_id}/attempts", headers=auth)
    assert listed.status_code == 200, listed.text
    attempts = listed.json()["data"]
    assert sorted(a["status_code"] for a in attempts) == [200, 200]
    assert all(a["error"] is None and a["latency_ms"] >= 0 for a in attempts)

    # a test event, then a replay of the first delivery: the same id again
    test = mail.http.post(f"/v1/webhooks/{hook_id}/test", headers=auth)
    assert test.status_code == 202
    replayed = posts[0].headers["webhook-id"]
    again = mail.http.post(f"/v1/events/{replayed}/replay", headers=auth)
    assert again.status_code == 202 and again.json() == {"event_id": replayed, "endpoints": 1}
    later = got.wait(4)[2:]
    bodies = {Webhook(secret).verify(p.body, p.headers)["type"]: p for p in later}
    assert set(bodies) == {"webhook.test", posts[0].headers and json.loads(posts[0].body)["type"]}
    assert any(p.headers["webhook-id"] == replayed for p in later)
    other = mail.server.call(lambda s: keys.create_key(s, "other", [Scope.READ]))[1]
    hidden = mail.http.post(
        f"/v1/events/{replayed}/replay", headers={"Authorization": f"Bearer {other}"}
    )
    assert hidden.status_code == 404


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def setup(
    store: Store, got: Receiver, path: str, **cfg: float
) -> tuple[WebhookSender, WebhookAdmin, Clock, str]:
    """An endpoint for message.accepted at the receiver's path, then one message."""
    clock = Clock()
    config = WebhooksConfig(**{**HOOKS, **cfg})
    admin = WebhookAdmin(
        store, SecretBox(Fernet.generate_key()), config, make_resolver("", 1), clock
    )
    owner = ApiKey("K", "app", frozenset({Scope.SEND, Scope.READ}), (), clock.now, None)
    hook, _ = await admin.create(owner, got.url(path), ["message.accepted"], "")
    sender = WebhookSender(store, admin, config, clock, random.Random(7))
    clock.now += 1
    raw = b"From: a@example.org\r\n\r\nhi\r\n"
    await store.enqueue(
        NewMessage(
            raw, "a@example.org", ("b@x.test",), Source.HTTP, api_key_id="K", created_at=clock.now
        )
    )
    assert await sender.fan_out() >= 1
    return sender, admin, clock, hook.id


async def test_failures_retry_on_the_schedule_then_deliver(store: Store, got: Receiver) -> None:
    got.answers["/flaky"] = [500, 503]
    sender, _, clock, hook_id = await setup(store, got, "/flaky")
    try:
        assert await sender.send_due() == 1
        assert await sender.send_due() == 0, "not due again before its delay"
        clock.now += SCHEDULE[0] * 1.2
        assert await sender.send_due() == 1
        clock.now += SCHEDULE[0] * 1.2
        assert await sender.send_due() == 0
        clock.now += SCHEDULE[1] * 1.2
        assert await sender.send_due() == 1
        clock.now += 10**6
        assert await sender.send_due() == 0, "delivered: never again"
    finally:
        await sender.client.close()
    attempts = await store.webhook_attempts(hook_id, 10)
    assert [a[3] for a in attempts] == [200, 503, 500]  # newest first
    assert [a[5] for a in attempts] == [None, "HTTP 503", "HTTP 500"]
    assert len({p.headers["webhook-id"] for p in got.got}) == 1, "one id on every attempt"
    assert len({p.body for p in got.got}) == 1, "the same body on every attempt"


async def test_410_gone_disables_the_endpoint(store: Store, got: Receiver) -> None:
    got.answers["/gone"] = [410]
    sender, _, clock, hook_id = await setup(store, got, "/gone")
    try:
        assert await sender.send_due() == 1
        clock.now += 10**6
        assert await sender.send_due() == 0
    finally:
        await sender.client.close()
    found = await store.get_webhook(hook_id)
    assert found is not None
    hook = found[0]
    assert not hook.enabled and hook.disabled_reason == "the endpoint answered 410 Gone"
    assert len(got.got) == 1


async def test_a_timeout_retries_and_an_endpoint_failing_for_days_is_disabled(
    store: Store, got: Receiver
) -> None:
    got.delay = 1.5  # the timeout is 1 s
    sender, _, clock, hook_id = await setup(store, got, "/slow", disable_after=100.0)
    try:
        assert await sender.send_due() == 1
        attempts = await store.webhook_attempts(hook_id, 10)
        assert attempts[0][3] is None and "Timeout" in attempts[0][5]
        found = await store.get_webhook(hook_id)
        assert found is not None and found[0].enabled, "one failure does not disable"
        clock.now += 200
        assert await sender.send_due() == 1
    finally:
        await sender.client.close()
    found = await store.get_webhook(hook_id)
    assert found is not None and not found[0].enabled
    assert found[0].disabled_reason and "failed" in found[0].disabled_reason


async def test_after_the_whole_schedule_a_delivery_fails_for_good(
    store: Store, got: Receiver
) -> None:
    got.answers["/down"] = [500] * 20
    sender, _, clock, hook_id = await setup(store, got, "/down", disable_after=10**9)
    try:
        for _ in range(len(SCHEDULE) + 1):
            assert await sender.send_due() == 1
            clock.now += 40_000
        assert await sender.send_due() == 0
    finally:
        await sender.client.close()
    assert len(got.got) == len(SCHEDULE) + 1
    assert len(await store.webhook_attempts(hook_id, 20)) == len(SCHEDULE) + 1


async def test_a_disabled_endpoints_deliveries_wait_unclaimed_until_it_is_enabled(
    store: Store, got: Receiver
) -> None:
    sender, admin, clock, hook_id = await setup(store, got, "/paused")
    owner = ApiKey("K", "app", frozenset({Scope.SEND, Scope.READ}), (), clock.now, None)
    try:
        await admin.update(owner, hook_id, None, None, None, enabled=False)
        for _ in range(3):  # not claimed (and released) over and over: left alone
            assert await sender.send_due() == 0
            clock.now += 7200
        assert got.got == []
        await admin.update(owner, hook_id, None, None, None, enabled=True)
        assert await sender.send_due() == 1
    finally:
        await sender.client.close()
    assert len(got.got) == 1
