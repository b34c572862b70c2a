"""Hostile input to the HTTP API: each case gets its status and field, nothing is stored
half-way, and the server keeps answering."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mailgate.errors import StoreUnavailable
from tests.ingress.conftest import RunningServer

BASE: dict[str, Any] = {"from": "a@example.org", "to": "b@example.com", "text": "hi"}
INJECT = "x\r\nBcc: victim@evil.test"


def att(**kw: Any) -> dict[str, Any]:
    return {"attachments": [{"filename": "f.txt", "content": "aGk=", **kw}]}


CASES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("from", {"from": f"a@example.org{INJECT}"}, 422, "from"),
    ("from name", {"from": f"A{INJECT} <a@example.org>"}, 422, "from"),
    ("to", {"to": [f"b@example.com{INJECT}"]}, 422, "to[0]"),
    ("cc", {"cc": f"c@example.com{INJECT}"}, 422, "cc[0]"),
    ("bcc", {"bcc": ["d@example.com\n"]}, 422, "bcc[0]"),
    ("reply_to", {"reply_to": f"r@example.com{INJECT}"}, 422, "reply_to[0]"),
    ("subject", {"subject": f"hi{INJECT}"}, 422, "subject"),
    ("subject NUL", {"subject": "a\x00b"}, 422, "subject"),
    ("header value", {"headers": {"X-A": f"v{INJECT}"}}, 422, "headers.X-A"),
    ("header name", {"headers": {"X-A\r\nBcc": "v"}}, 422, "headers"),
    ("reserved header", {"headers": {"Bcc": "v@evil.test"}}, 422, "headers"),
    ("filename", att(filename=f"a{INJECT}"), 422, "attachments[0].filename"),
    ("content type", att(content_type="text/plain\r\nBcc: x"), 422, "attachments[0].content_type"),
    ("content id", att(content_id="a\r\nb"), 422, "attachments[0].content_id"),
    ("bad base64", att(content="***"), 422, "attachments[0].content"),
    ("tag", {"tags": [f"t{INJECT}"]}, 422, "tags[0]"),
    ("metadata", {"metadata": {"k": f"v{INJECT}"}}, 422, "metadata.k"),
    ("relay trick", {"to": "a%b@example.com"}, 422, "to[0]"),
    ("bad address", {"to": "nobody"}, 422, "to[0]"),
    ("unknown field", {"bogus": True}, 422, "bogus"),
    ("wrong type", {"to": 42}, 422, "to"),
    (
        "wrong type nested",
        {"attachments": [{"filename": 1, "content": "aGk="}]},
        422,
        "attachments[0].filename",
    ),
    ("no body", {"text": None}, 422, "text"),
    ("too many recipients", {"to": [f"r{i}@example.com" for i in range(10_000)]}, 422, "to"),
    ("naive schedule", {"scheduled_at": "2030-01-01T00:00:00"}, 422, "scheduled_at"),
    ("bad reply id", {"reply_to_message_id": "../../etc"}, 422, "reply_to_message_id"),
]


def total(server: RunningServer) -> int:
    return sum(server.call(lambda s: s.status_counts()).values())


@pytest.mark.parametrize(("name", "patch", "status", "field"), CASES, ids=[c[0] for c in CASES])
def test_hostile_json_fields(
    server: RunningServer, name: str, patch: dict[str, Any], status: int, field: str | None
) -> None:
    body = {**BASE, **patch}
    r = httpx.post(
        f"{server.http_url}/v1/messages",
        json=body,
        headers={"Authorization": f"Bearer {server.send_key}"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field and error["message"]
    assert total(server) == 0
    still_up(server)


RAW_CASES = [
    ("malformed JSON", b'{"from": ', "application/json", 400),
    ("invalid UTF-8", b'{"from": "\xff\xfe"}', "application/json", 400),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
    (
        "JSON bomb of nesting in a field",
        b'{"metadata": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        "application/json",
        400,
    ),
    ("not an object", b"[]", "application/json", 422),
    ("wrong content type", b"{}", "text/plain", 415),
    ("100 MB body", b"x" * (100 * 1024 * 1024), "application/json", 413),
]


@pytest.mark.parametrize(
    ("name", "body", "ctype", "status"), RAW_CASES, ids=[c[0] for c in RAW_CASES]
)
def test_hostile_bodies(
    server: RunningServer, name: str, body: bytes, ctype: str, status: int
) -> None:
    r = httpx.post(
        f"{server.http_url}/v1/messages",
        content=body,
        timeout=60,
        headers={"Authorization": f"Bearer {server.send_key}", "Content-Type": ctype},
    )
    assert r.status_code == status, r.text[:300]
    assert r.json()["error"]["code"]
    assert total(server) == 0
    still_up(server)


def test_chunked_body_over_the_limit_is_413(server: RunningServer) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(50):
            yield b"x" * (1024 * 1024)

    r = httpx.post(
        f"{server.http_url}/v1/messages",
        content=chunks(),
        timeout=60,
        headers={"Authorization": f"Bearer {server.send_key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    still_up(server)


def still_up(server: RunningServer) -> None:
    r = httpx.get(f"{server.http_url}/healthz", timeout=10)
    assert r.status_code == 200


def test_rate_limit_answers_429_with_retry_after(tmp_path, ca) -> None:  # type: ignore[no-untyped-def]
    from tests.ingress.conftest import make_config, start_server

    cfg = make_config(tmp_path, ca, http={"rate_limit_per_second": 1, "rate_limit_burst": 3})
    for srv in start_server(cfg, ca):
        codes = [
            httpx.post(
                f"{srv.http_url}/v1/messages",
                json=BASE,
                headers={"Authorization": f"Bearer {srv.send_key}"},
            ).status_code
            for _ in range(5)
        ]
        assert codes[:3] == [202, 202, 202] and codes[3] == 429
        r = httpx.post(
            f"{srv.http_url}/v1/messages",
            json=BASE,
            headers={"Authorization": f"Bearer {srv.send_key}"},
        )
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [(StoreUnavailable("disk full"), 503, "unavailable"), (RuntimeError("a bug"), 500, "internal")],
    ids=["store-cannot-commit", "a-bug"],
)
def test_failures_after_validation_answer_json_and_store_nothing(
    server: RunningServer, error: Exception, status: int, code: str
) -> None:
    with server.failing_enqueue(error):
        r = httpx.post(
            f"{server.http_url}/v1/messages",
            json=BASE,
            headers={"Authorization": f"Bearer {server.send_key}"},
        )
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert str(error) not in r.text  # details go to the log only
    if status == 503:
        assert r.headers["Retry-After"] == "5"
    assert total(server) == 0
    still_up(server)


def test_client_that_disconnects_mid_body_leaves_no_trace(server: RunningServer) -> None:
    import socket

    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.send_key}"
        '\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"from": '
    )
    port = int(server.http_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(head.encode())
    still_up(server)
    assert total(server) == 0
