"""The new pages (overview, suppressions, webhooks, domains, captured mail) as a hostile
client meets them, over HTTP: every POST refused without its own session's token, from
another origin, or from a revoked key's session; every page closed to no session and to
a revoked key's; no redirect off the dashboard; no words of a URL's choosing shown as the
dashboard's own (such a link survives sign-in through next=); no-store and no framing."""

from __future__ import annotations

import httpx
import pytest

from mailgate import keys
from mailgate.models import Scope, Suppression, SuppressionReason
from tests.ui.conftest import Dashboard, csrf_of, sign_in, signed_in

SPOOF = "Security notice: your key leaked, send it to audit at evil.example"
PAGES = ("/ui/overview", "/ui/suppressions", "/ui/webhooks", "/ui/domains", "/ui/captured")
ELSEWHERE = (
    "//evil.example/",
    "/\\evil.example",
    "https://evil.example/ui/",
    "/ui\\..\\..\\evil.example",
    "/ui/\r\nSet-Cookie: a=b",
    "/ui/\tx",
    "javascript:alert(1)//ui/",
    " /ui/overview",
    "/ui/..//evil.example",
    "/ui//evil.example",
)


def api(dash: Dashboard) -> dict[str, str]:
    return {"Authorization": f"Bearer {dash.admin_key}"}


def suppressed(dash: Dashboard) -> list[str]:
    answer = httpx.get(f"{dash.url}/v1/suppressions?limit=1000", headers=api(dash))
    return [e["address"] for e in answer.json()["data"]]


def domain(dash: Dashboard, name: str) -> dict[str, object] | None:
    answer = httpx.get(f"{dash.url}/v1/domains/{name}", headers=api(dash))
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]


def event_ref(dash: Dashboard) -> str:
    sent = httpx.post(
        f"{dash.url}/v1/messages",
        headers=api(dash),
        json={"from": "app@example.org", "to": "r@example.com", "subject": "s", "text": "t"},
    )
    events = dash.server.call(lambda s: s.events(sent.json()["id"]))
    return f"evt_{events[0].id}"


def changes(dash: Dashboard) -> list[tuple[str, dict[str, str]]]:
    """Each new POST with a form that would change something (unchanged() tells)."""
    keep = Suppression("keep@example.com", SuppressionReason.MANUAL, 1.0)
    dash.server.call(lambda s: s.put_suppressions([keep]))
    with signed_in(dash) as (client, csrf):
        made = client.post("/ui/domains", data={"csrf": csrf, "name": "attack.example"})
        assert made.status_code in (303, 422)  # 422: made by an earlier test
    return [
        ("/ui/suppressions", {"address": "victim@example.com"}),
        ("/ui/suppressions/remove", {"address": keep.address, "domain": ""}),
        ("/ui/domains", {"name": "other.example"}),
        ("/ui/domains/attack.example/verify", {}),
        ("/ui/webhooks/replay", {"event": event_ref(dash)}),
    ]


def unchanged(dash: Dashboard) -> None:
    listed = suppressed(dash)
    assert "victim@example.com" not in listed and "keep@example.com" in listed
    assert domain(dash, "other.example") is None
    checked = domain(dash, "attack.example")
    assert checked is not None and checked["checked_at"] is None  # never verified


def test_every_new_post_needs_its_own_sessions_token_from_this_origin(dash: Dashboard) -> None:
    forms = changes(dash)
    other_key = dash.new_admin("other")
    with (
        signed_in(dash) as (client, csrf),
        signed_in(dash, other_key) as (_, theirs),
        signed_in(dash) as (_, same_keys_other_session),
    ):
        assert len({csrf, theirs, same_keys_other_session}) == 3
        here = client.base_url
        for path, data in forms:
            for token, origin in (
                (None, None),
                ("", None),
                ("forged", None),
                (theirs, None),  # another key's session
                (same_keys_other_session, None),  # the same key's other session
                (csrf, "https://evil.example"),  # its own token, from another site
                (csrf, "null"),  # from a sandboxed frame
                (csrf, f"{here.scheme}://{here.host}:1"),  # another port
            ):
                form = dict(data) | ({"csrf": token} if token is not None else {})
                headers = {"origin": origin} if origin else {}
                answer = client.post(path, data=form, headers=headers)
                assert answer.status_code == 403, (path, token, origin)
                assert "location" not in answer.headers
            # the token in the query string, or as JSON, is no form of this session's
            assert client.post(f"{path}?csrf={csrf}", data=data).status_code == 403
            assert client.post(path, json={**data, "csrf": csrf}).status_code == 403
    unchanged(dash)


def test_a_revoked_keys_session_reaches_no_new_page(dash: Dashboard) -> None:
    forms = changes(dash)
    key, secret = dash.server.call(lambda s: keys.create_key(s, "gone", [Scope.ADMIN]))
    with signed_in(dash, secret) as (client, csrf):
        for path in PAGES:
            assert client.get(path).status_code == 200
        assert dash.server.call(lambda s: s.revoke_key(key.id, 1.0))
        for path in (*PAGES, "/ui/webhooks?endpoint=x"):
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/ui/signin?next=/ui/")
        for path, data in forms:
            assert client.post(path, data={**data, "csrf": csrf}).status_code == 403, path
    unchanged(dash)


def test_a_key_without_admin_and_no_session_reach_nothing(dash: Dashboard) -> None:
    forms = changes(dash)
    _, reader = dash.server.call(lambda s: keys.create_key(s, "reader", [Scope.READ]))
    with dash.client() as client:
        assert sign_in(client, reader).status_code == 403
        assert "mailgate_session" not in client.cookies
        for path in PAGES:
            assert client.get(path).status_code == 303, path
        token = csrf_of(client.get("/ui/signin"))  # the sign-in form's: not a session's
        for path, data in forms:
            assert client.post(path, data={**data, "csrf": token}).status_code == 403, path
    unchanged(dash)


@pytest.mark.parametrize("target", ELSEWHERE)
def test_no_redirect_leaves_the_dashboard(dash: Dashboard, target: str) -> None:
    ref = event_ref(dash)
    message_id = httpx.get(f"{dash.url}/v1/messages?limit=1", headers=api(dash)).json()["data"][0][
        "id"
    ]
    with signed_in(dash) as (client, csrf):
        answers = [
            client.post("/ui/webhooks/replay", data={"csrf": csrf, "event": ref, "next": target}),
            client.post(f"/ui/messages/{message_id}/retry", data={"csrf": csrf, "next": target}),
        ]
        with dash.client() as stranger:
            form = stranger.get("/ui/signin", params={"next": target})
            answers.append(
                stranger.post(
                    "/ui/signin",
                    data={"csrf": csrf_of(form), "key": dash.admin_key, "next": target},
                )
            )
        for answer in answers:
            assert answer.status_code == 303, answer.text
            location = answer.headers["location"]
            assert location.startswith("/ui/") and not location.startswith("//")
            assert "\r" not in location and "\n" not in location and "\\" not in location
            landed = httpx.URL(dash.url).join(location)
            assert (landed.scheme, landed.host, landed.port) == (
                client.base_url.scheme,
                client.base_url.host,
                client.base_url.port,
            )


def test_a_links_words_are_never_shown_as_the_dashboards_own(dash: Dashboard) -> None:
    """A link can carry text into a page's query; SameSite=Strict keeps the session
    cookie off a link from elsewhere, but sign-in's next= brings the admin back to it."""
    spoof = httpx.QueryParams({"problem": SPOOF}).get("problem")
    links = [
        f"/ui/webhooks?{httpx.QueryParams({'problem': spoof})}",
        f"/ui/domains?{httpx.QueryParams({'problem': spoof})}",
        f"/ui/webhooks?{httpx.QueryParams({'replayed': spoof[:40], 'endpoints': '1'})}",
        f"/ui/webhooks?{httpx.QueryParams({'endpoint': spoof[:64]})}",
        f"/ui/messages/{spoof.replace(' ', '%20').replace(':', '%3A')}",
        f"/ui/messages?{httpx.QueryParams({'status': spoof})}",
    ]
    with dash.client() as client:
        for link in links:
            to_signin = client.get(link)
            assert to_signin.status_code == 303
            form = client.get(to_signin.headers["location"])
            signed = client.post(
                "/ui/signin",
                data={
                    "csrf": csrf_of(form),
                    "key": dash.admin_key,
                    "next": httpx.URL(to_signin.headers["location"]).params["next"],
                },
            )
            assert signed.status_code == 303
            page = client.get(signed.headers["location"])
            assert page.status_code in (200, 400, 404), link
            assert "evil.example" not in page.text, link  # not even in a hidden field
            assert "leaked" not in page.text, link
            client.cookies.clear()
    with signed_in(dash) as (client, _):
        ref = "evt_12345"
        shown = client.get(f"/ui/webhooks?replayed={ref}&endpoints=3")
        assert f"Event {ref} queued again for 3 endpoint(s)." in shown.text
        for count in ("²", "9" * 40, "-1", ""):  # not a count: no notice, no error
            odd = client.get("/ui/webhooks", params={"replayed": ref, "endpoints": count})
            assert odd.status_code == 200 and "queued again" not in odd.text


def test_a_failed_replay_is_answered_in_place(dash: Dashboard) -> None:
    with signed_in(dash) as (client, csrf):
        for event, why in (("evt_999999999", "No event"), (SPOOF[:40], "No event")):
            answer = client.post(
                "/ui/webhooks/replay",
                data={"csrf": csrf, "event": event, "next": "/ui/webhooks?endpoint=none"},
            )
            assert answer.status_code == 404 and "location" not in answer.headers
            assert why in answer.text and 'class="problem"' in answer.text
            assert answer.headers["cache-control"] == "no-store"


def test_new_pages_are_not_stored_or_framed(dash: Dashboard) -> None:
    with signed_in(dash) as (client, csrf):
        answers = [client.get(path) for path in PAGES]
        answers.append(client.post("/ui/domains", data={"csrf": csrf, "name": "x"}))  # 422
        answers.append(client.post("/ui/suppressions", data={"name": "x"}))  # 403
        answers.append(client.post("/ui/domains/none.example/verify", data={"csrf": csrf}))
        made = client.post("/ui/keys", data={"csrf": csrf, "name": "k", "scopes": "read"})
        assert made.status_code == 201 and 'id="new-secret"' in made.text  # a secret, once
        answers.append(made)
        for answer in answers:
            assert answer.headers["cache-control"] == "no-store", answer.url
            assert answer.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
