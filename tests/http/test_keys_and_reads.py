"""Scopes, sender domains, isolation between keys, and the read endpoints."""

from __future__ import annotations

import time

import httpx

from mailgate import keys
from mailgate.models import Scope
from tests.ingress.conftest import RunningServer
from tests.ingress.smtp_relay.dialog import greeted

MSG = {"from": "a@example.org", "to": "b@example.com", "text": "hi", "tags": ["t"]}


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_bad_and_underscoped_keys(server: RunningServer) -> None:
    url = f"{server.http_url}/v1/messages"
    r = httpx.post(url, json=MSG)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.post(url, json=MSG, headers=h(server.send_key[:-3] + "xyz"))
    assert r.status_code == 401
    r = httpx.post(url, json=MSG, headers=h(server.read_key))
    assert r.status_code == 403
    r = httpx.get(url, headers=h(server.send_key))
    assert r.status_code == 403  # send-only keys cannot read


def test_sender_domain_limit(server: RunningServer) -> None:
    url = f"{server.http_url}/v1/messages"
    r = httpx.post(
        url, json={**MSG, "from": "Boss <boss@example.com>"}, headers=h(server.restricted_key)
    )
    assert r.status_code == 403 and r.json()["error"]["field"] == "from"
    r = httpx.post(
        url, json={**MSG, "from": "Me <me@example.org>"}, headers=h(server.restricted_key)
    )
    assert r.status_code == 202


def test_isolation_between_keys_and_admin_sees_all(server: RunningServer) -> None:
    def make(scopes: list[Scope]) -> str:
        return server.call(lambda s: keys.create_key(s, "k", scopes))[1]

    alice, bob, admin = (
        make([Scope.SEND, Scope.READ]),
        make([Scope.SEND, Scope.READ]),
        make([Scope.ADMIN]),
    )
    r = httpx.post(f"{server.http_url}/v1/messages", json=MSG, headers=h(alice))
    mid = r.json()["id"]
    for path in (f"/v1/messages/{mid}", f"/v1/messages/{mid}/raw"):
        assert httpx.get(server.http_url + path, headers=h(bob)).status_code == 404
        assert httpx.get(server.http_url + path, headers=h(alice)).status_code == 200
        assert httpx.get(server.http_url + path, headers=h(admin)).status_code == 200
    assert (
        httpx.post(f"{server.http_url}/v1/messages/{mid}/cancel", headers=h(bob)).status_code == 404
    )
    listed = httpx.get(f"{server.http_url}/v1/messages", headers=h(bob)).json()
    assert listed["data"] == []
    mine = httpx.get(f"{server.http_url}/v1/messages", headers=h(alice)).json()["data"]
    assert [x["id"] for x in mine] == [mid]
    assert mid in [
        x["id"]
        for x in httpx.get(f"{server.http_url}/v1/messages", headers=h(admin)).json()["data"]
    ]


def test_get_list_raw_and_cancel(server: RunningServer) -> None:
    admin = server.call(lambda s: keys.create_key(s, "a", [Scope.ADMIN]))[1]
    ids = []
    with httpx.Client(base_url=server.http_url, headers=h(admin)) as c:
        for i in range(5):
            r = c.post(
                "/v1/messages",
                json={
                    **MSG,
                    "to": f"r{i}@example.com",
                    "tags": ["even" if i % 2 == 0 else "odd"],
                    "scheduled_at": "2099-01-01T00:00:00Z",
                },
            )
            ids.append(r.json()["id"])
        page = c.get("/v1/messages", params={"limit": 2}).json()
        assert [x["id"] for x in page["data"]] == ids[::-1][:2]
        page2 = c.get("/v1/messages", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert [x["id"] for x in page2["data"]] == ids[::-1][2:4]
        odd = c.get("/v1/messages", params={"tag": "odd"}).json()["data"]
        assert sorted(x["id"] for x in odd) == sorted([ids[1], ids[3]])
        one = c.get("/v1/messages", params={"recipient": "r2@example.com"}).json()["data"]
        assert [x["id"] for x in one] == [ids[2]]
        recent = c.get("/v1/messages", params={"since": time.time() - 60}).json()["data"]
        assert set(ids) <= {x["id"] for x in recent}
        detail = c.get(f"/v1/messages/{ids[0]}").json()
        assert detail["recipients"][0]["status"] == "queued"
        assert [e["kind"] for e in detail["events"]] == ["accepted"]
        raw = c.get(f"/v1/messages/{ids[0]}/raw")
        assert raw.headers["content-type"] == "message/rfc822"
        assert raw.content == server.call(lambda s: s.get_raw(ids[0]))
        cancelled = c.post(f"/v1/messages/{ids[0]}/cancel").json()
        assert cancelled["recipients"][0]["status"] == "cancelled"
        assert [e["kind"] for e in cancelled["events"]] == ["accepted", "cancelled"]
        queued = c.get("/v1/messages", params={"status": "cancelled"}).json()["data"]
        assert [x["id"] for x in queued] == [ids[0]]
        assert c.get("/v1/messages/NOPE").status_code == 404


def test_health_ready_metrics_openapi(server: RunningServer) -> None:
    assert httpx.get(f"{server.http_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.http_url}/readyz").status_code == 200
    httpx.post(f"{server.http_url}/v1/messages", json=MSG, headers=h(server.send_key))
    httpx.post(f"{server.http_url}/v1/messages", json={"from": "x"}, headers=h(server.send_key))
    with greeted(server.smtp_port) as d:  # both doors count
        assert d.cmd("MAIL FROM:<a@example.org>")[0] == 250
        assert d.cmd("RCPT TO:<b@example.com>")[0] == 250
        assert d.cmd("DATA")[0] == 354
        d.send(b"Subject: counted\r\n\r\nbody\r\n.\r\n")
        assert d.read_reply()[0] == 250
    metrics = httpx.get(f"{server.http_url}/metrics").text
    assert 'mailgate_accepted_messages_total{source="http"} 1.0' in metrics
    assert 'mailgate_accepted_messages_total{source="smtp"} 1.0' in metrics
    assert 'mailgate_rejected_requests_total{reason="invalid_field"} 1.0' in metrics
    assert 'mailgate_queue_depth{status="queued"} 2.0' in metrics
    assert "mailgate_http_request_seconds_bucket" in metrics
    spec = httpx.get(f"{server.http_url}/openapi.json").json()
    assert "SendRequest" in spec["components"]["schemas"]
    assert "/v1/messages" in spec["paths"]
    assert httpx.get(f"{server.http_url}/docs").status_code == 200
