"""Idempotency-Key (replay, conflict, concurrent), batch and raw submissions."""

from __future__ import annotations

import base64
import concurrent.futures

import httpx

from tests.ingress.conftest import RunningServer

MSG = {"from": "a@example.org", "to": "b@example.com", "text": "hi"}


def post(server: RunningServer, path: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}{path}",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {server.send_key}", **headers},
    )


def total(server: RunningServer) -> int:
    return sum(server.call(lambda s: s.status_counts()).values())


def test_replay_returns_the_first_response(server: RunningServer) -> None:
    first = post(server, "/v1/messages", MSG, **{"Idempotency-Key": "k1"})
    again = post(server, "/v1/messages", MSG, **{"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert total(server) == 1


def test_same_key_other_body_conflicts(server: RunningServer) -> None:
    assert post(server, "/v1/messages", MSG, **{"Idempotency-Key": "k2"}).status_code == 202
    r = post(server, "/v1/messages", {**MSG, "text": "other"}, **{"Idempotency-Key": "k2"})
    assert r.status_code == 409 and r.json()["error"]["field"] == "Idempotency-Key"
    assert total(server) == 1


def test_concurrent_requests_with_one_key_make_one_message(server: RunningServer) -> None:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda _: post(server, "/v1/messages", MSG, **{"Idempotency-Key": "race"}),
                range(16),
            )
        )
    assert {r.status_code for r in results} == {202}
    assert len({r.json()["id"] for r in results}) == 1
    assert total(server) == 1


def test_batch_mixes_valid_and_invalid_items(server: RunningServer) -> None:
    items = [
        MSG,
        {**MSG, "to": "not-an-address"},
        {**MSG, "bogus": 1},
        {**MSG, "from": "x@elsewhere.test", "to": ["c@example.com", "d@example.com"]},
    ]
    r = post(server, "/v1/messages/batch", {"messages": items})
    assert r.status_code == 202, r.text
    out = r.json()
    assert (out["accepted"], out["rejected"]) == (2, 2)
    res = out["results"]
    assert "id" in res[0] and "id" in res[3]
    assert res[1]["error"]["field"] == "messages[1].to[0]"
    assert res[2]["error"]["field"] == "messages[2].bogus"
    assert total(server) == 3  # 1 + 2 recipients, all committed together
    bad = post(server, "/v1/messages/batch", {"messages": [{"from": "x"}]})
    assert bad.status_code == 422


def test_batch_limit(server: RunningServer) -> None:
    r = post(server, "/v1/messages/batch", {"messages": [MSG] * 501})
    assert r.status_code == 422 and r.json()["error"]["field"] == "messages"


def test_raw_as_json_and_as_rfc822(server: RunningServer) -> None:
    raw = b"From: a@example.org\nTo: b@example.com\nSubject: raw\n\nline one\n"
    r = post(
        server,
        "/v1/messages/raw",
        {"raw": base64.b64encode(raw).decode(), "from": "a@example.org", "to": ["b@example.com"]},
    )
    assert r.status_code == 202, r.text
    stored = server.call(lambda s: s.get_raw(r.json()["id"]))
    assert stored is not None and stored.endswith(
        b"From: a@example.org\r\nTo: b@example.com\r\nSubject: raw\r\n\r\nline one\r\n"
    )
    assert b"\r\nMessage-ID: <" in stored
    r2 = httpx.post(
        f"{server.http_url}/v1/messages/raw",
        content=raw,
        params={"from": "a@example.org", "to": ["b@example.com", "c@example.com"]},
        headers={"Authorization": f"Bearer {server.send_key}", "Content-Type": "message/rfc822"},
    )
    assert r2.status_code == 202, r2.text
    assert [x["address"] for x in r2.json()["recipients"]] == ["b@example.com", "c@example.com"]
    r3 = httpx.post(
        f"{server.http_url}/v1/messages/raw",
        content=raw,
        params={"from": "a@x.org"},
        headers={"Authorization": f"Bearer {server.send_key}", "Content-Type": "message/rfc822"},
    )
    assert r3.status_code == 422 and r3.json()["error"]["field"] == "to"
