"""The overview, suppressions, webhooks and domains pages over HTTP: their content, CSRF
on their forms, and hostile values shown as text."""

from __future__ import annotations

import httpx

from mailgate.models import EventKind, Suppression, SuppressionReason, Webhook, new_id
from mailgate.store import Store
from tests.ui.conftest import Dashboard, signed_in

HOSTILE = "<script>alert(1)</script>"


def api(dash: Dashboard) -> dict[str, str]:
    return {"Authorization": f"Bearer {dash.admin_key}"}


def suppressed(dash: Dashboard) -> list[str]:
    answer = httpx.get(f"{dash.url}/v1/suppressions", headers=api(dash))
    return [e["address"] for e in answer.json()["data"]]


def test_the_overview_counts_the_events(dash: Dashboard) -> None:
    for n in range(3):
        sent = httpx.post(
            f"{dash.url}/v1/messages",
            headers=api(dash),
            json={
                "from": "app@example.org",
                "to": f"o{n}@example.com",
                "subject": "Hi",
                "text": "hi",
            },
        )
        assert sent.status_code == 202
    with signed_in(dash) as (client, _):
        page = client.get("/ui/overview")
        assert page.status_code == 200
        assert "<script" not in page.text  # the charts are SVG drawn here
        assert page.text.count("<svg") == 3
        assert 'class="bar accepted"' in page.text
        for period in ("hour", "day", "week"):
            assert f'id="period-{period}"' in page.text
        assert "accepted <strong>" in page.text
        # a second look reads the finished hours from memory and still counts them all
        again = client.get("/ui/overview")
        assert again.text.count('class="bar accepted"') == page.text.count('class="bar accepted"')


def test_the_overview_counts_by_time_bucket(dash: Dashboard) -> None:
    async def bounds(store: Store) -> tuple[list[int], list[dict[str, int]]]:
        ids = await store.event_ids_at([0.0, 4e9])
        return ids, await store.event_counts([(ids[0], ids[1])])

    ids, counts = dash.server.call(bounds)
    assert ids[1] > ids[0]  # every event is between the epoch and 2096
    assert counts[0].get(EventKind.ACCEPTED.value, 0) >= 1


def test_suppressions_add_and_remove_with_csrf(dash: Dashboard) -> None:
    address = f"x{HOSTILE}@example.com".lower()
    with signed_in(dash) as (client, csrf):
        # without the token, or with another session's: refused, nothing added
        for token in (None, "forged"):
            data = {"address": "nobody@example.com", "reason": "manual"}
            if token:
                data["csrf"] = token
            assert client.post("/ui/suppressions", data=data).status_code == 403
        assert "nobody@example.com" not in suppressed(dash)
        refused = client.post("/ui/suppressions/remove", data={"address": "a@b.c"})
        assert refused.status_code == 403
        # a bad address is explained, not stored
        bad = client.post("/ui/suppressions", data={"csrf": csrf, "address": "not an address"})
        assert bad.status_code == 422 and 'class="problem"' in bad.text
        added = client.post(
            "/ui/suppressions",
            data={"csrf": csrf, "address": "bob@example.com", "reason": "manual"},
        )
        assert added.status_code == 303
        assert "bob@example.com" in suppressed(dash)
        page = client.get("/ui/suppressions?done=added")
        assert "bob@example.com" in page.text and "Added" in page.text
        removed = client.post(
            "/ui/suppressions/remove",
            data={"csrf": csrf, "address": "bob@example.com", "domain": ""},
        )
        assert removed.status_code == 303
        assert "bob@example.com" not in suppressed(dash)
        # hostile text typed into the form comes back escaped
        echoed = client.post("/ui/suppressions", data={"csrf": csrf, "address": address})
        assert HOSTILE not in echoed.text and "&lt;script&gt;" in echoed.text


def test_a_hostile_suppression_is_shown_as_text(dash: Dashboard) -> None:
    entry = Suppression(f'"{HOSTILE}"@example.com'.lower(), SuppressionReason.MANUAL, 1.0, "")
    dash.server.call(lambda s: s.put_suppressions([entry]))
    with signed_in(dash) as (client, _):
        page = client.get("/ui/suppressions")
        assert page.status_code == 200
        assert HOSTILE.lower() not in page.text and "&lt;script&gt;" in page.text


def test_suppressions_page_by_cursor(dash: Dashboard) -> None:
    entries = [
        Suppression(f"page{n:03}@example.net", SuppressionReason.UNSUBSCRIBE, 1.0)
        for n in range(60)
    ]
    dash.server.call(lambda s: s.put_suppressions(entries))
    with signed_in(dash) as (client, _):
        first = client.get("/ui/suppressions?prefix=page")
        assert "page000@example.net" in first.text and "page050@example.net" not in first.text
        link = first.text.split('<nav class="pages">')[1].split('href="')[1].split('"')[0]
        second = client.get(link.replace("&amp;", "&"))
        assert "page050@example.net" in second.text and "page000@example.net" not in second.text
        assert client.get("/ui/suppressions?cursor=nonsense").status_code == 200


def add_hook(dash: Dashboard, description: str, url: str = "https://hooks.example.net/in") -> str:
    admin = dash.server.app.http.api.hooks  # type: ignore[union-attr]
    hook = Webhook(new_id(), None, url, ("message.accepted",), description, True, None, 1.0, 1.0)
    sealed = admin._seal([("whsec_test", None)])
    dash.server.call(lambda s: s.add_webhook(hook, sealed))
    return hook.id


def test_webhooks_list_escaped_and_replay_with_csrf(dash: Dashboard) -> None:
    hook_id = add_hook(dash, f"billing {HOSTILE}", url=f"https://hooks.example.net/{HOSTILE}")
    sent = httpx.post(
        f"{dash.url}/v1/messages",
        headers=api(dash),
        json={"from": "app@example.org", "to": "w@example.com", "subject": "Hi", "text": "hi"},
    )
    message_id = sent.json()["id"]
    events = dash.server.call(lambda s: s.events(message_id))
    ref = f"evt_{events[0].id}"
    with signed_in(dash) as (client, csrf):
        page = client.get(f"/ui/webhooks?endpoint={hook_id}")
        assert page.status_code == 200
        assert HOSTILE not in page.text and "billing &lt;script&gt;" in page.text
        assert f'id="hook-{hook_id}"' in page.text and "Attempts to" in page.text
        for data in ({"event": ref}, {"event": ref, "csrf": "forged"}):
            assert client.post("/ui/webhooks/replay", data=data).status_code == 403
        replayed = client.post(
            "/ui/webhooks/replay",
            data={"csrf": csrf, "event": ref, "next": f"/ui/webhooks?endpoint={hook_id}"},
        )
        assert replayed.status_code == 303
        assert f"replayed={ref}" in replayed.headers["location"]
        assert replayed.headers["location"].startswith(f"/ui/webhooks?endpoint={hook_id}&")
        shown = client.get(replayed.headers["location"])
        assert f"Event {ref} queued again for" in shown.text
        unknown = client.post("/ui/webhooks/replay", data={"csrf": csrf, "event": "evt_999999999"})
        assert unknown.status_code == 404 and "No event" in unknown.text  # in place
        # a next= off the dashboard is not followed
        away = client.post(
            "/ui/webhooks/replay", data={"csrf": csrf, "event": ref, "next": "//evil.example/"}
        )
        assert away.headers["location"].startswith("/ui/webhooks?")


def test_domains_add_with_csrf_and_hostile_names_escaped(dash: Dashboard) -> None:
    with signed_in(dash) as (client, csrf):
        assert client.post("/ui/domains", data={"name": "a.example"}).status_code == 403
        forged = {"name": "a.example", "csrf": "forged"}
        assert client.post("/ui/domains", data=forged).status_code == 403
        assert client.post("/ui/domains/a.example/verify", data={}).status_code == 403
        assert "a.example" not in client.get("/ui/domains").text
        bad = client.post("/ui/domains", data={"csrf": csrf, "name": HOSTILE})
        assert bad.status_code == 422
        assert HOSTILE not in bad.text and "&lt;script&gt;" in bad.text
        added = client.post("/ui/domains", data={"csrf": csrf, "name": "shop.example"})
        assert added.status_code == 303
        page = client.get("/ui/domains?done=added")
        assert 'id="d-shop.example"' in page.text
        assert "dkim" in page.text.lower() and "pending" in page.text
        missing = client.post("/ui/domains/none.example/verify", data={"csrf": csrf})
        assert missing.status_code == 404


def test_captured_mail_says_when_capture_is_off(dash: Dashboard) -> None:
    with signed_in(dash) as (client, _):
        page = client.get("/ui/captured")
        assert page.status_code == 200 and "Capture mode is off" in page.text
        assert 'href="/ui/captured"' not in page.text.split("<main>")[0]  # not in the menu


def test_the_messages_list_names_three_recipients_and_counts_the_rest(dash: Dashboard) -> None:
    to = [f"m{n:03}@example.com" for n in range(250)]
    sent = httpx.post(
        f"{dash.url}/v1/messages",
        headers=api(dash),
        json={"from": "app@example.org", "to": to, "subject": "Many", "text": "hi"},
    )
    assert sent.status_code == 202, sent.text
    with signed_in(dash) as (client, _):
        page = client.get("/ui/messages", params={"subject": "Many"})
    assert page.status_code == 200
    at = page.text.index("m000@example.com")
    row = page.text[page.text.rindex("<tr", 0, at) : page.text.index("</tr>", at)]
    assert [a for a in to if a in row] == to[:3]
    assert "+247" in row
