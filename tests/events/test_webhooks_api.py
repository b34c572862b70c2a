"""Webhook endpoints through the real server: secrets shown once and stored sealed,
signatures the official `standardwebhooks` library verifies, URLs that cannot point
inside (loopback, private networks, cloud metadata, a name resolving to them), owners."""

from __future__ import annotations

import datetime
import json
import sqlite3
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from mailgate import keys
from mailgate.events import signing
from mailgate.models import Scope
from tests.domains.conftest import Mail


def app_key(mail: Mail, name: str) -> str:
    return mail.server.call(lambda s: keys.create_key(s, name, [Scope.SEND, Scope.READ]))[1]


def call(mail: Mail, key: str, method: str, path: str, **kw: Any) -> Any:
    return mail.http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)


def test_signatures_verify_with_the_standard_webhooks_library() -> None:
    secret, old = signing.new_secret(), signing.new_secret()
    body = json.dumps({"type": "message.delivered", "data": {"x": 1}}).encode()
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    headers = signing.headers([secret, old], "evt_42", now, body)
    assert headers["webhook-id"] == "evt_42" and headers["webhook-timestamp"] == str(now)
    for each in (secret, old):  # during a rotation either secret verifies
        assert Webhook(each).verify(body, headers) == {
            "type": "message.delivered",
            "data": {"x": 1},
        }
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1", b"2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the id is signed too
        Webhook(secret).verify(body, {**headers, "webhook-id": "evt_43"})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.test/in", "https"),
        ("https://127.0.0.1/in", "not a public address"),
        ("https://10.1.2.3/in", "not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://[::ffff:127.0.0.1]/in", "not a public address"),
        ("https://inside.example.test/in", "not a public address"),
        ("https://192.0.0.192/latest", "not a public address"),
        ("https://[fec0::1]/in", "not a public address"),
        ("https://1.1.1.1/caf\u00e9", "ASCII"),
        ("https://mixed.example.test/in", "not a public address"),
        ("https://user:pw@hooks.example.test/in", "credentials"),
        ("https://nowhere.example.test/in", "no address"),
        ("ftp://hooks.example.test/in", "https"),
        ("https:///in", "no host"),
    ],
)
def test_urls_that_lead_inside_are_refused_naming_the_field(mail: Mail, url: str, why: str) -> None:
    mail.zone.add("hooks.example.test", "A", "93.184.216.34")
    mail.zone.add("inside.example.test", "A", "10.0.0.5")
    mail.zone.add("mixed.example.test", "A", "93.184.216.34")
    mail.zone.add("mixed.example.test", "A", "127.0.0.1")
    made = call(
        mail,
        app_key(mail, "app"),
        "POST",
        "/v1/webhooks",
        json={"url": url, "events": ["message.delivered"]},
    )
    assert made.status_code == 422, made.text
    error = made.json()["error"]
    assert error["field"] == "url" and why in error["message"], error


def test_endpoints_are_their_owners_and_their_secret_is_shown_once(mail: Mail) -> None:
    mail.zone.add("hooks.example.test", "A", "93.184.216.34")
    mine, other = app_key(mail, "app"), app_key(mail, "other")
    made = call(
        mail,
        mine,
        "POST",
        "/v1/webhooks",
        json={
            "url": "https://hooks.example.test/in",
            "events": ["message.delivered", "message.bounced"],
            "description": "crm",
        },
    )
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store", "a shown-once secret is never cached"
    hook = made.json()
    secret = hook["secret"]
    assert secret.startswith("whsec_") and hook["id"].startswith("wh_") and hook["enabled"]
    got = call(mail, mine, "GET", f"/v1/webhooks/{hook['id']}").json()
    assert got["secret"] is None and got["events"] == ["message.delivered", "message.bounced"]
    assert secret not in call(mail, mine, "GET", "/v1/webhooks").text
    assert [h["id"] for h in call(mail, mine, "GET", "/v1/webhooks").json()["data"]] == [hook["id"]]
    assert call(mail, other, "GET", "/v1/webhooks").json()["data"] == []
    assert call(mail, other, "GET", f"/v1/webhooks/{hook['id']}").status_code == 404
    assert call(mail, other, "DELETE", f"/v1/webhooks/{hook['id']}").status_code == 404
    assert [h["id"] for h in call(mail, mail.admin_key, "GET", "/v1/webhooks").json()["data"]] == [
        hook["id"]
    ]

    bad = call(
        mail, mine, "PATCH", f"/v1/webhooks/{hook['id']}", json={"events": ["message.opened"]}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "events"
    off = call(mail, mine, "PATCH", f"/v1/webhooks/{hook['id']}", json={"enabled": False})
    assert off.json()["enabled"] is False and off.json()["disabled_reason"]
    on = call(mail, mine, "PATCH", f"/v1/webhooks/{hook['id']}", json={"enabled": True})
    assert on.json()["enabled"] is True and on.json()["disabled_reason"] is None

    rotation = call(mail, mine, "POST", f"/v1/webhooks/{hook['id']}/rotate-secret")
    assert rotation.headers["cache-control"] == "no-store"
    rotated = rotation.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
    store = mail.server.app.store
    assert store is not None
    db = store.path  # type: ignore[attr-defined]
    with sqlite3.connect(db) as conn:
        [(sealed,)] = conn.execute("SELECT secrets FROM webhook_endpoints").fetchall()
    assert "whsec_" not in sealed and secret not in sealed
    api = mail.server.app.http
    assert api is not None
    hooks_admin = api.api.hooks  # type: ignore[attr-defined]
    signing_now = [s for s, _ in hooks_admin.secrets(sealed, datetime.datetime.now().timestamp())]
    assert signing_now == [rotated["secret"], secret], "the old secret signs beside the new"
    assert call(mail, mine, "DELETE", f"/v1/webhooks/{hook['id']}").json() == {"deleted": True}
    assert call(mail, mine, "GET", f"/v1/webhooks/{hook['id']}").status_code == 404


@pytest.mark.parametrize(
    "mail",
    [
        {
            "webhooks": {
                "allow_http": True,
                "allow_private_networks": ["127.0.0.0/8"],
                "max_endpoints": 2,
            }
        }
    ],
    indirect=True,
)
def test_endpoints_per_key_are_capped_and_a_revoked_keys_are_disabled(mail: Mail) -> None:
    key = app_key(mail, "app")
    other = app_key(mail, "other")
    body = {"url": "http://127.0.0.1:9/in", "events": ["message.delivered"]}
    made = [call(mail, key, "POST", "/v1/webhooks", json=body) for _ in range(3)]
    assert [r.status_code for r in made] == [201, 201, 409]
    assert made[2].json()["error"]["field"] == "url"
    assert "At most 2 endpoints" in made[2].json()["error"]["message"]
    assert call(mail, other, "POST", "/v1/webhooks", json=body).status_code == 201, "per key"

    key_id = keys.key_id_of(key)
    revoked = mail.admin("DELETE", f"/v1/keys/{key_id}")
    assert revoked.status_code == 200, revoked.text
    listed = mail.admin("GET", "/v1/webhooks").json()["data"]
    by_state = {(h["enabled"], h["disabled_reason"]) for h in listed}
    assert by_state == {(False, "its API key was revoked"), (True, None)}
    assert sum(not h["enabled"] for h in listed) == 2, "only the revoked key's two"
    assert call(mail, key, "GET", "/v1/webhooks").status_code == 401

    # an admin key's endpoint gets every event: revoking that key stops it too
    made_admin = mail.admin("POST", "/v1/keys", json={"name": "ops", "scopes": ["admin"]})
    assert made_admin.headers["cache-control"] == "no-store"
    assert made_admin.status_code == 201, made_admin.text
    ops = made_admin.json()["secret"]
    hook_id = call(mail, ops, "POST", "/v1/webhooks", json=body).json()["id"]
    assert mail.admin("DELETE", f"/v1/keys/{made_admin.json()['id']}").status_code == 200
    hook = mail.admin("GET", f"/v1/webhooks/{hook_id}").json()
    assert (hook["enabled"], hook["disabled_reason"]) == (False, "its API key was revoked")
    sandbox_admin = {"name": "x", "scopes": ["admin"], "sandbox": True}
    refused = mail.admin("POST", "/v1/keys", json=sandbox_admin)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "scopes"
