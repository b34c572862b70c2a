"""The dashboard's security over HTTP: no session, no page; a wrong key counted by the
API's failed-login guard; CSRF tokens; the policies every answer carries and the stricter
one of a message's HTML; a revoked key's session ending; cookies' attributes; /docs
without a CDN."""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path

import httpx
import trustme

from mailgate.ui.headers import EMAIL_POLICY
from mailgate.ui.session import SESSION_SECONDS, Session, Sessions
from tests.ui.conftest import Dashboard, sign_in, signed_in, start

HOSTILE_HTML = '<p>hello</p><script>alert(1)</script><img src="http://127.0.0.1:9/x">'


def send(dash: Dashboard, **body: object) -> str:
    answer = httpx.post(
        f"{dash.url}/v1/messages",
        headers={"Authorization": f"Bearer {dash.admin_key}"},
        json={"from": "app@example.org", "to": "alice@example.com", "subject": "Hi", **body},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_without_a_session_every_page_leads_to_sign_in(dash: Dashboard) -> None:
    message_id = send(dash, html=HOSTILE_HTML)
    with dash.client() as client:
        for path in (
            "/ui/messages?recipient=alice%40example.com",
            f"/ui/messages/{message_id}",
            f"/ui/messages/{message_id}/html",
            f"/ui/messages/{message_id}/raw",
            "/ui/queue",
            "/ui/keys",
            "/ui/overview",
            "/ui/suppressions",
        ):
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/ui/signin?next=/ui/"), path
        assert client.get("/ui/").headers["location"] == "/ui/overview"
        # a change without a session is refused outright, not redirected
        refused = client.post(f"/ui/messages/{message_id}/cancel", data={"csrf": "x"})
        assert refused.status_code == 403
    assert (
        httpx.get(
            f"{dash.url}/v1/messages/{message_id}",
            headers={"Authorization": f"Bearer {dash.admin_key}"},
        ).json()["recipients"][0]["status"]
        == "queued"
    )


def test_a_good_key_becomes_a_strict_session_cookie(dash: Dashboard) -> None:
    with dash.client() as client:
        answer = sign_in(client, dash.admin_key)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/overview"
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("mailgate_session=")
        )
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "path", "max-age", "samesite"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/ui" in cookie.lower()
        assert f"max-age={SESSION_SECONDS}" in cookie.lower()
        assert "secure" not in attributes  # plain HTTP here; see the TLS test
        assert dash.admin_key not in cookie  # the key itself is kept nowhere
        assert client.get("/ui/messages").status_code == 200
        assert "mg_" not in answer.headers["location"]


def test_a_wrong_key_is_refused_and_counted_by_the_guard(fresh: Dashboard) -> None:
    guard = fresh.server.app.http.api.auth.guard  # type: ignore[union-attr]
    with fresh.client() as client:
        for _ in range(3):  # failures_per_ip = 3 in these tests
            assert not guard.ip_locked("127.0.0.1")
            wrong = sign_in(client, fresh.admin_key[:-4] + "AAAA")
            assert wrong.status_code == 401
            assert "not valid" in wrong.text
            assert "mailgate_session" not in wrong.headers.get("set-cookie", "")
        assert guard.ip_locked("127.0.0.1")
        # locked out: the right key too, as on the API
        locked = sign_in(client, fresh.admin_key)
        assert locked.status_code == 429
        assert "Too many failed sign-ins" in locked.text
        assert int(locked.headers["retry-after"]) > 0
        api = httpx.get(
            f"{fresh.url}/v1/keys", headers={"Authorization": f"Bearer {fresh.admin_key}"}
        )
        assert api.status_code == 429  # one guard for both doors


def test_a_key_without_the_admin_scope_gets_no_session(dash: Dashboard) -> None:
    with dash.client() as client:
        answer = sign_in(client, dash.server.send_key)
        assert answer.status_code == 403
        assert "admin scope" in answer.text
        assert client.get("/ui/keys").status_code == 303


def test_forms_without_their_sessions_token_are_refused(dash: Dashboard) -> None:
    with signed_in(dash) as (client, token), signed_in(dash) as (_, other_token):
        before = len(client.get("/ui/keys").text)
        for data in (
            {"name": "no token", "scopes": "send"},
            {"name": "wrong token", "scopes": "send", "csrf": "x" * 43},
            {"name": "another session's", "scopes": "send", "csrf": other_token},
        ):
            answer = client.post("/ui/keys", data=data)
            assert answer.status_code == 403, data
            assert "mg_" not in answer.text
        # from another site, even with the token
        cross = client.post(
            "/ui/keys",
            data={"name": "cross", "scopes": "send", "csrf": token},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        assert len(client.get("/ui/keys").text) == before  # no key was made
        made = client.post("/ui/keys", data={"name": "good", "scopes": "send", "csrf": token})
        assert made.status_code == 201
        assert re.search(r"mg_[0-9A-Z]{26}_", made.text)
        # the sign-in form has its own token
        refused = client.post("/ui/signin", data={"key": dash.admin_key})
        assert refused.status_code == 403


def test_every_answer_carries_the_dashboards_policy(dash: Dashboard) -> None:
    with signed_in(dash) as (client, _), dash.client() as stranger:
        for path in (
            "/ui/signin",
            "/ui/messages",
            "/ui/keys",
            "/ui/queue",
            "/ui/static/dashboard.css",
        ):
            answer = (stranger if path == "/ui/signin" else client).get(path)
            assert answer.status_code == 200, path
            policy = answer.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
            assert directives["default-src"] == "'self'"
            assert directives["script-src"] == "'self'"  # no inline script, no eval
            assert directives["frame-ancestors"] == "'none'"
            assert directives["object-src"] == "'none'"
            assert "unsafe" not in policy
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert answer.headers["x-frame-options"] == "DENY"
            assert "app;dur=" in answer.headers["server-timing"]
        assert client.get("/ui/messages").headers["cache-control"] == "no-store"
        missing = client.get("/ui/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert missing.status_code == 404
        assert "content-security-policy" in missing.headers


def test_a_messages_html_is_served_inert(dash: Dashboard) -> None:
    message_id = send(dash, html=HOSTILE_HTML, text="hello")
    with signed_in(dash) as (client, _):
        page = client.get(f"/ui/messages/{message_id}")
        assert page.status_code == 200
        frame = re.search(r"<iframe[^>]*>", page.text)
        assert frame is not None
        assert 'sandbox=""' in frame.group(0)
        assert "<script>alert(1)" not in page.text  # the page escapes it: only the frame has it
        html = client.get(f"/ui/messages/{message_id}/html")
        assert html.status_code == 200
        assert "<script>alert(1)</script>" in html.text  # as sent: the policy stops it
        assert html.headers["content-security-policy"] == EMAIL_POLICY
        directives = dict((d.strip() + " ").split(" ", 1) for d in EMAIL_POLICY.split(";"))
        assert directives["default-src"].strip() == "'none'"
        assert directives["style-src"].strip() == "'unsafe-inline'"
        assert directives["img-src"].strip() == "data:"
        assert "sandbox" in directives and "script-src" not in directives
        assert html.headers["x-frame-options"] == "SAMEORIGIN"
        raw = client.get(f"/ui/messages/{message_id}/raw")
        assert raw.headers["content-type"].startswith("text/plain")
        assert "sandbox" in raw.headers["content-security-policy"]


def test_a_revoked_keys_session_ends_at_once(dash: Dashboard) -> None:
    second = dash.new_admin("second")
    with signed_in(dash, second) as (client, _), signed_in(dash) as (admin, token):
        assert client.get("/ui/messages").status_code == 200
        key_id = second.split("_")[1]
        revoked = admin.post(f"/ui/keys/{key_id}/revoke", data={"csrf": token})
        assert revoked.status_code == 303
        assert revoked.headers["location"] == "/ui/keys?done=revoked"
        answer = client.get("/ui/messages")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/signin")
        assert sign_in(client, second).status_code == 401


def test_sign_out_clears_the_cookie(dash: Dashboard) -> None:
    with signed_in(dash) as (client, token):
        out = client.post("/ui/signout", data={"csrf": token})
        assert out.status_code == 303 and out.headers["location"] == "/ui/signin"
        assert 'mailgate_session=""' in out.headers["set-cookie"]
        assert client.get("/ui/messages").status_code == 303


def test_over_tls_the_cookie_is_secure(tmp_path: Path, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    for dash in start(tmp_path, ca, tls=True):
        url = dash.url.replace("http://", "https://")
        with httpx.Client(base_url=url, verify=context, follow_redirects=False) as client:
            answer = sign_in(client, dash.admin_key)
            assert answer.status_code == 303
            cookie = next(
                c
                for c in answer.headers.get_list("set-cookie")
                if c.startswith("mailgate_session=")
            )
            assert "secure" in [a.strip().lower() for a in cookie.split(";")]
            assert client.get("/ui/messages").status_code == 200


def test_sessions_are_sealed_and_expire() -> None:
    sessions = Sessions(None)
    now = time.time()
    session = sessions.new("01ARZ3NDEKTSV4RRFFQ69G5FAV", now)
    cookie = sessions.seal(session)
    assert sessions.open(cookie, now) == session
    assert sessions.open(cookie, now + SESSION_SECONDS + 1) is None  # over
    assert Sessions(None).open(cookie, now) is None  # another server's box
    assert sessions.open(cookie[:-2] + "AA", now) is None  # changed
    assert sessions.open("not a token", now) is None
    token, signin_cookie = sessions.signin_token()
    assert sessions.open(signin_cookie, now) is None  # a sign-in token is no session
    assert sessions.signin_ok(signin_cookie, token, now)
    assert not sessions.signin_ok(cookie, session.csrf, now)  # nor a session a sign-in token
    assert not sessions.signin_ok(signin_cookie, token, now + 7200)
    assert Session("k", now + 10, "abc").csrf_ok("abc")
    assert not Session("k", now + 10, "abc").csrf_ok(None)


def test_docs_load_swagger_ui_from_mailgate_itself(dash: Dashboard) -> None:
    with dash.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/") for s in sources), sources
        assert "cdn" not in page.text.lower()
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "'sha256-" in policy
        for source in sources:
            asset = client.get(source)
            assert asset.status_code == 200, source
        assert client.get("/redoc").status_code == 404
        licence = client.get("/ui/static/vendor/swagger-ui/LICENSE")
        assert "Apache License" in licence.text
