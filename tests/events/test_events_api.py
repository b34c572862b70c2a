"""GET /v1/events through the real server: what delivery did to each recipient, as
public payloads, in commit order, paged without a skip or a repeat, per key."""

from __future__ import annotations

import time
from typing import Any

import httpx

from mailgate import keys
from mailgate.models import Scope
from tests.domains.conftest import INBOX, Mail


def events(mail: Mail, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every event the key may read, page by page."""
    out: list[dict[str, Any]] = []
    after = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        page = mail.http.get("/v1/events", params=query, headers={"Authorization": f"Bearer {key}"})
        assert page.status_code == 200, page.text
        body = page.json()
        out.extend(body["data"])
        after = body["next_cursor"]
        if not body["has_more"]:
            return out


def settled(mail: Mail, message_id: str) -> dict[str, str]:
    """Wait until no recipient of the message is queued; their statuses."""
    deadline = time.monotonic() + 30
    while True:
        got = mail.http.get(
            f"/v1/messages/{message_id}", headers={"Authorization": f"Bearer {mail.admin_key}"}
        ).json()
        statuses = {r["address"]: r["status"] for r in got["recipients"]}
        if "queued" not in statuses.values() or time.monotonic() > deadline:
            return statuses


def app_key(mail: Mail, name: str) -> str:
    """A key that sends and reads its own (what an application holds)."""
    made = mail.server.call(lambda s: keys.create_key(s, name, [Scope.SEND, Scope.READ]))
    return made[1]


def test_events_tell_each_recipients_outcome_in_order_and_per_key(mail: Mail) -> None:
    key = app_key(mail, "app")
    sent = mail.http.post(
        "/v1/messages",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "from": "app@example.org",
            "to": [f"ok@{INBOX}", f"reject-me@{INBOX}", f"tempfail@{INBOX}"],
            "subject": "s",
            "text": "t",
            "tags": ["welcome"],
            "metadata": {"user": "42"},
        },
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]
    assert settled(mail, message_id) == {
        f"ok@{INBOX}": "delivered",
        f"reject-me@{INBOX}": "bounced",
        f"tempfail@{INBOX}": "deferred",
    }
    mine = events(mail, key)
    assert mine[0]["type"] == "message.accepted"
    by_type = {e["type"]: e for e in mine}
    assert set(by_type) == {
        "message.accepted",
        "message.delivered",
        "message.bounced",
        "message.deferred",
    }
    accepted = by_type["message.accepted"]["data"]
    assert accepted["message_id"] == message_id and accepted["recipients"] == 3
    delivered = by_type["message.delivered"]["data"]
    assert delivered["recipient"] == f"ok@{INBOX}" and delivered["status"] == "delivered"
    assert delivered["reply"]["code"] == 250 and delivered["attempt"] == 1
    assert delivered["remote_host"] and delivered["tags"] == ["welcome"]
    assert delivered["metadata"] == {"user": "42"}
    bounced = by_type["message.bounced"]["data"]
    assert bounced["reply"]["code"] == 550 and bounced["reply"]["enhanced"] == "5.1.1"
    deferred = by_type["message.deferred"]["data"]
    assert deferred["reply"]["code"] == 451 and "next_attempt_at" in deferred
    assert len({e["id"] for e in mine}) == len(mine)

    # one event a page: the same events, in the same order
    assert [e["id"] for e in events(mail, key, limit=1)] == [e["id"] for e in mine]
    only = events(mail, key, type=["message.delivered", "message.bounced"])
    assert sorted(e["type"] for e in only) == ["message.bounced", "message.delivered"]

    # another key reads none of them; an admin reads them all, and the domains' events
    assert events(mail, app_key(mail, "another app")) == []
    mail.add_verified("example.org")
    everything = events(mail, mail.admin_key)
    assert {e["id"] for e in mine} <= {e["id"] for e in everything}
    assert any(
        e["type"] == "domain.verified" and e["data"] == {"domain": "example.org"}
        for e in everything
    )
    assert not any(e["type"].startswith("domain.") for e in events(mail, key))


def test_bad_queries_are_refused_naming_the_parameter(mail: Mail) -> None:
    auth = {"Authorization": f"Bearer {app_key(mail, 'app')}"}
    unknown = mail.http.get("/v1/events", params={"type": "message.opened"}, headers=auth)
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "type"
    cursor = mail.http.get("/v1/events", params={"after": "1; DROP"}, headers=auth)
    assert cursor.status_code == 422 and cursor.json()["error"]["field"] == "after"
    foreign = mail.http.get("/v1/events", params={"after": "000:0"}, headers=auth)
    assert foreign.status_code == 422 and foreign.json()["error"]["field"] == "after"
    limit = mail.http.get("/v1/events", params={"limit": 0}, headers=auth)
    assert limit.status_code == 422 and limit.json()["error"]["field"] == "limit"
    assert httpx.get(f"{mail.server.http_url}/v1/events").status_code == 401
