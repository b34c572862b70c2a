"""schemathesis against the running server's own /openapi.json: no 5xx, no response
outside the documented schema, with bounded examples per operation.

The calls carry a key with both send and read scopes, and messages of that key are in the
queue before the run, so the read routes answer 200 with real bodies and those bodies are
checked against the schema too (a send-only key would get 403 from every read route)."""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import trustme
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mailgate import keys
from mailgate.models import Scope
from tests.ingress.conftest import RunningServer, make_config, start_server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
READS = [  # each must answer 200 at least once, its body checked against the schema
    ("GET", "/v1/messages"),
    ("GET", "/v1/messages/{message_id}"),
    ("GET", "/v1/messages/{message_id}/raw"),
    ("GET", "/v1/messages/{message_id}/parsed"),
    ("POST", "/v1/messages/{message_id}/cancel"),
    ("GET", "/v1/suppressions"),
]
SENDS = [  # each must answer 202 at least once (generated bodies rarely pass validation)
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/batch"),
    ("POST", "/v1/messages/raw"),
]
ADMIN_READS = [  # with the admin key (domains are admin-only); each must answer 2xx once
    ("POST", "/v1/domains"),
    ("GET", "/v1/domains"),
    ("GET", "/v1/domains/{name}"),
    ("POST", "/v1/domains/{name}/rotate"),
    ("DELETE", "/v1/domains/{name}"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys"),
]
ADMIN_ONLY = ("/v1/domains", "/v1/keys")
SEND = {
    "from": "seed@example.org",
    "to": ["someone@example.com"],
    "subject": "seeded",
    "text": "a message the read routes can find",
}
RAW = b"From: seed@example.org\r\nTo: someone@example.com\r\nSubject: raw\r\n\r\nraw\r\n"


def examples(seeded: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """One valid call per route that generated data would not make: real ids, valid mail."""
    raw = {"raw": base64.b64encode(RAW).decode(), "from": SEND["from"], "to": SEND["to"]}
    return {
        ("GET", "/v1/messages"): {},
        ("GET", "/v1/messages/{message_id}"): {"path_parameters": {"message_id": seeded["read"]}},
        ("GET", "/v1/messages/{message_id}/raw"): {
            "path_parameters": {"message_id": seeded["read"]}
        },
        ("GET", "/v1/messages/{message_id}/parsed"): {
            "path_parameters": {"message_id": seeded["read"]}
        },
        ("GET", "/v1/suppressions"): {},
        ("POST", "/v1/suppressions"): {
            "body": {"suppressions": [{"address": "gone@example.com"}]},
            "media_type": "application/json",
        },
        ("POST", "/v1/keys"): {
            "body": {"name": "made", "scopes": ["send"], "sandbox": True},
            "media_type": "application/json",
        },
        ("POST", "/v1/messages/{message_id}/cancel"): {
            "path_parameters": {"message_id": seeded["cancel"]}
        },
        ("POST", "/v1/messages"): {"body": SEND, "media_type": "application/json"},
        ("POST", "/v1/messages/batch"): {
            "body": {"messages": [SEND, SEND]},
            "media_type": "application/json",
        },
        ("POST", "/v1/messages/raw"): {"body": raw, "media_type": "application/json"},
        ("POST", "/v1/domains"): {
            "body": {"name": "schema.example"},
            "media_type": "application/json",
        },
        ("GET", "/v1/domains/{name}"): {"path_parameters": {"name": "kept.example"}},
        ("POST", "/v1/domains/{name}/rotate"): {"path_parameters": {"name": "kept.example"}},
        ("DELETE", "/v1/domains/{name}"): {"path_parameters": {"name": "gone.example"}},
    }


@dataclass
class Live:
    server: RunningServer
    key: str  # send and read
    admin: str  # admin, for /v1/domains
    seeded: dict[str, str]  # role -> id of a queued message of this key


def seed(base_url: str, key: str) -> str:
    """A queued message of `key` (delivery is off in these tests: it stays queued)."""
    r = httpx.post(f"{base_url}/v1/messages", json=SEND, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    ca = trustme.CA()
    for server in start_server(make_config(tmp, ca), ca):
        _, key = server.call(
            lambda store: keys.create_key(store, "schemathesis", [Scope.SEND, Scope.READ])
        )
        _, admin = server.call(lambda store: keys.create_key(store, "admin", [Scope.ADMIN]))
        seeded = {role: seed(server.http_url, key) for role in ("read", "cancel")}
        for name in ("kept.example", "gone.example"):  # for the routes of one domain
            r = httpx.post(
                f"{server.http_url}/v1/domains",
                json={"name": name},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 201, r.text
        yield Live(server, key, admin, seeded)


def test_api_conforms_to_its_schema(live: Live) -> None:
    # Driven by hand: schemathesis' pytest plugin does not load under pytest 9.
    base_url = live.server.http_url
    auth = {"Authorization": f"Bearer {live.key}"}
    admin = {"Authorization": f"Bearer {live.admin}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) >= 9
    valid = examples(live.seeded)
    seen: defaultdict[tuple[str, str], Counter[int]] = defaultdict(Counter)

    def call(case: Any) -> None:
        headers = admin if case.operation.path.startswith(ADMIN_ONLY) else auth
        response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)
        seen[(case.operation.method.upper(), case.operation.path)][response.status_code] += 1

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def generated(case: Any) -> None:
            call(case)

        generated()
        # Generated ids name no message and generated mail is rarely valid: one real call.
        example = valid.get((operation.method.upper(), operation.path))
        if example is not None:
            call(operation.Case(**example))

    missing = set(READS + SENDS) - set(seen)
    assert not missing, f"routes missing from the schema: {missing}"
    for route in READS:
        assert seen[route][200] >= 1, f"{route} never answered 200: {dict(seen[route])}"
    for route in SENDS:
        assert seen[route][202] >= 1, f"{route} never answered 202: {dict(seen[route])}"
    for route in ADMIN_READS:
        ok = sum(n for code, n in seen[route].items() if 200 <= code < 300)
        assert ok >= 1, f"{route} never answered 2xx: {dict(seen[route])}"
    forbidden = {route: n[403] for route, n in seen.items() if n[403]}
    assert not forbidden, f"the right key was refused: {forbidden}"
