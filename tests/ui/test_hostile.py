"""Hostile strings in every value the new pages show that someone else chose: a message's
subject, text, header, tag, metadata and attachment name (its sender's), a remote SMTP
reply and host (the deferral reason on the overview, the queue and the message), a
suppression's address and scope, a webhook's URL, description, disabling reason and an
attempt's error, a DNS answer shown as "found", an API key's name (and the signed-in
key's, in every page's header). Generated (hypothesis) and rendered by a real server:
each must come back as text (escaped where it is stored as is), and no page may carry an
element, an attribute or a script the string brought. Then the same pages in Chromium."""

from __future__ import annotations

import base64
import dataclasses
import html
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import escape
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from mailgate import keys
from mailgate.models import (
    RecipientStatus,
    RecordCheck,
    RecordStatus,
    Reply,
    Scope,
    Settlement,
    Suppression,
    SuppressionReason,
    Webhook,
    WebhookAttempt,
    new_id,
)
from mailgate.store import Store
from tests.ingress.conftest import make_config, start_server
from tests.ui.conftest import Dashboard, sign_in

FRAGMENTS = (
    "<script>window.pwned=1</script>",
    '"><x-pwn x-pwn="1">',
    "'><x-pwn>",
    "</title><x-pwn>",
    "</text></svg><x-pwn>",
    "<img src=x onerror=window.pwned=1>",
    "<svg onload=window.pwned=1>",
    "</textarea></pre></code><x-pwn>",
    "<!--",
    "-->",
    "]]>",
    "&amp;",
    "&#60;x-pwn&#62;",
    "javascript:alert(1)",
    "{{ 7*7 }}",
    "{%",
    "<",
    ">",
    '"',
    "'",
    "&",
    "`",
    "\\",
    "\u202e",
    "é",
)
pytestmark = pytest.mark.slow  # generated values through a real server, and a browser

ROUTE = "hostile.example"
WHO = '<x-pwn x-pwn="who">admin</x-pwn>'  # the signed-in key's name, in every header
FAR = time.time() + 10**7  # due then: no worker takes what the test put in the queue

plain = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=4,
)
hostile = (
    st.lists(st.sampled_from(FRAGMENTS) | plain, min_size=1, max_size=5)
    .map("".join)
    .filter(lambda v: any(c in v for c in "<>&\"'") and len(v) <= 200)
)


class Shape(HTMLParser):
    """What a page is made of: its elements and their attributes (as a browser parses
    it: character references in text and attributes resolved)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    handle_startendtag = handle_starttag


def inert(page: str, where: str) -> None:
    """No element, attribute or script in the page that a value brought."""
    shape = Shape()
    shape.feed(page)
    for tag, attrs in shape.tags:
        assert tag not in ("script", "x-pwn", "img", "style"), (where, tag)
        assert tag != "svg" or where.startswith("/ui/overview"), (where, tag)
        for name, value in attrs:
            assert not name.startswith("on") and "pwn" not in name, (where, tag, name)
            if name in ("href", "src", "action"):
                assert value is not None and value.startswith("/"), (where, tag, value)


@dataclasses.dataclass
class Seeded:
    value: str
    message_id: str
    hook_id: str
    domain: str
    suppression: str


def fixture_server(tmp: Path, ca: trustme.CA) -> Iterator[Dashboard]:
    """Capture mode (the captured page is on), delivery off (the queue is the test's)."""
    data = make_config(tmp, ca).model_dump()
    for section in ("smtp", "http"):  # the deprecated spellings of accept.max_recipients
        del data[section]["max_recipients"]
    data["server"]["delivery_process"] = False
    data["delivery"] = {"enabled": False, "mode": "capture"}
    config = type(make_config(tmp, ca)).model_validate(data)
    for server in start_server(config, ca):
        _, admin = server.call(lambda s: keys.create_key(s, WHO, [Scope.ADMIN, Scope.SEND]))
        yield Dashboard(server, admin)


@pytest.fixture(scope="module")
def hostile_dash(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Dashboard]:
    yield from fixture_server(tmp_path_factory.mktemp("hostile"), ca)


@pytest.fixture(scope="module")
def session(hostile_dash: Dashboard) -> Iterator[httpx.Client]:
    with hostile_dash.client() as client:
        assert sign_in(client, hostile_dash.admin_key).status_code == 303
        yield client


def seed(dash: Dashboard, value: str) -> Seeded:
    """The value everywhere it can go: through the API where the API takes it as is,
    else written to the store as a remote, a CSV import or an older version could."""
    n = new_id()
    auth = {"Authorization": f"Bearer {dash.admin_key}"}
    sent = httpx.post(
        f"{dash.url}/v1/messages",
        headers=auth,
        json={
            "from": "app@example.org",
            "to": f"r{n.lower()}@{ROUTE}",
            "subject": value,
            "text": value,
            "html": f"<p>{value}</p>",
            "headers": {"X-Hostile": value},
            "tags": [value[:100]],
            "metadata": {"note": value},
            "attachments": [{"filename": value, "content": base64.b64encode(b"hi").decode()}],
        },
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]

    async def defer(store: Store) -> None:  # a remote's 451 with its words, as delivery would
        while (claim := await store.claim("probe", time.time() + 1, 100, 60)) is not None:
            await store.settle(
                "probe",
                [
                    Settlement(
                        r.id,
                        RecipientStatus.DEFERRED,
                        Reply(451, "4.3.0", value),
                        remote_host=value,
                        next_attempt_at=FAR,
                    )
                    for r in claim.recipients
                ],
            )

    dash.server.call(defer)

    address = f"{value}{n}@x.example".lower()
    entry = Suppression(address, SuppressionReason.MANUAL, 1.0, value.lower(), message_id)
    dash.server.call(lambda s: s.put_suppressions([entry]))

    admin = dash.server.app.http.api.hooks  # type: ignore[union-attr]
    hook = Webhook(
        new_id(), None, f"https://hooks.example.net/{value}", ("message.complained",),
        value, True, None, 1.0, 1.0,
    )  # fmt: skip

    async def hook_with_attempt(store: Store) -> None:
        await store.add_webhook(hook, admin._seal([("whsec_test", None)]))
        row = new_id()
        await store.queue_webhook_messages([(row, hook.id, "evt_1", "{}", FAR, FAR, FAR)])
        taken = await store.claim_webhook_messages("probe", FAR + 1, FAR + 60, 100)
        attempts = [
            WebhookAttempt(r[0], r[1], r[2], FAR + 1, "failed", 500, 0.1, value) for r in taken
        ]
        await store.settle_webhook_messages("probe", attempts, FAR + 10**6)
        off = dataclasses.replace(hook, enabled=False, disabled_reason=value)
        await store.update_webhook(off)

    dash.server.call(hook_with_attempt)

    domain = f"d{n.lower()}.example"
    made = httpx.post(f"{dash.url}/v1/domains", headers=auth, json={"name": domain})
    assert made.status_code == 201, made.text
    found = {
        r["id"]: RecordCheck(RecordStatus.MISMATCHED, (value,), False)
        for r in made.json()["records"]
    }
    now = time.time()
    dash.server.call(lambda s: s.record_domain_check(domain, found, False, now, FAR))

    dash.server.call(lambda s: keys.create_key(s, value[:100], [Scope.READ]))
    return Seeded(value, message_id, hook.id, domain, address)


def pages(seeded: Seeded) -> dict[str, list[str]]:
    """Each page, and the values it shows stored as they came (so escaped exactly)."""
    v = seeded.value
    prefix = httpx.QueryParams({"prefix": seeded.suppression})
    return {
        "/ui/overview": [f"451 4.3.0 {v}", WHO],
        f"/ui/queue?route={ROUTE}": [f"451 4.3.0 {v}"],
        "/ui/messages": [],
        f"/ui/messages/{seeded.message_id}": [f"451 4.3.0 {v}", v],
        "/ui/captured": [],
        f"/ui/suppressions?{prefix}": [seeded.suppression, v.lower()],
        f"/ui/webhooks?endpoint={seeded.hook_id}": [f"https://hooks.example.net/{v}", v],
        "/ui/domains": [v],
        "/ui/keys": [v[:100]],
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=hostile)
def test_hostile_values_come_back_as_text(
    hostile_dash: Dashboard, session: httpx.Client, value: str
) -> None:
    seeded = seed(hostile_dash, value)
    for path, stored in pages(seeded).items():
        answer = session.get(path)
        assert answer.status_code == 200, (path, answer.text)
        inert(answer.text, path)
        for shown in stored:
            assert str(escape(shown)) in answer.text, (path, shown)
    # the message's own words come back as its reader sees them (the MIME round trip)
    one = session.get(f"/ui/messages/{seeded.message_id}").text
    assert html.unescape(one).count(value) >= 4  # subject, header, text, attachment
    listed = html.unescape(session.get("/ui/captured").text)
    assert value in listed  # the subject (the newest message is on the first page)


def test_hostile_values_run_nothing_in_chromium(hostile_dash: Dashboard, driver: WebDriver) -> None:
    """The pages as a browser builds them: nothing a value brought is an element, and
    no script ran (the policy would stop one too: this checks the escaping itself)."""
    seeded = seed(hostile_dash, "".join(FRAGMENTS))
    d, wait = driver, WebDriverWait(driver, 30)
    d.get(hostile_dash.url + "/ui/signin")
    wait.until(ec.presence_of_element_located((By.ID, "key"))).send_keys(hostile_dash.admin_key)
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(ec.url_contains("/ui/overview"))
    for path in pages(seeded):
        d.get(hostile_dash.url + path)
        wait.until(ec.presence_of_element_located((By.TAG_NAME, "main")))
        pwned, injected, text = d.execute_script(
            "return [window.pwned, document.querySelectorAll("
            "'script, x-pwn, img, [onerror], [onload], [x-pwn]').length,"
            " document.querySelector('main').innerText]"
        )
        assert pwned is None and injected == 0, path
        assert "<script>window.pwned=1</script>" in text, path  # shown, as text
        assert WHO in d.find_element(By.CSS_SELECTOR, "header .who").text
