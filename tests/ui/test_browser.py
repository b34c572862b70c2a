"""The dashboard in a real Chromium (Debian's chromium and chromedriver, headless), against
a real mailgate that delivers to a scripted SMTP sink (DNS on loopback): sign in, find a
message by recipient and read its timeline, retry a deferred recipient, create and revoke
a key, and open a message whose HTML tries to run script and call home, which must do
nothing. With MAILGATE_SCREENSHOTS=1 each page is saved to docs/screenshots/."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from mailgate import keys
from mailgate.models import Scope
from tests.delivery.conftest import free_port
from tests.delivery.peers import Script, SinkController, start_dns
from tests.domains.conftest import INBOX, mail_config
from tests.ingress.conftest import RunningServer, make_config, start_server
from tests.ui.conftest import CHROMEDRIVER, CHROMIUM

pytestmark = pytest.mark.slow  # a browser and a delivering server

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WAIT = 30  # seconds for any one thing to appear: generous on a loaded machine

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs Debian's chromium and chromium-driver (.ci/run)")
    pytest.skip("chromium and chromium-driver are not installed", allow_module_level=True)


@dataclass
class Listener:
    """A local web server that records every request: what a payload that ran would hit."""

    port: int = 0
    hits: list[str] = field(default_factory=list)
    page: str = ""  # served at /control, where it is not recorded

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


@dataclass
class World:
    server: RunningServer
    admin_key: str
    script: Script
    listener: Listener
    driver: WebDriver
    zone: Any = None  # the DNS the server asks (tests.delivery.peers)

    @property
    def url(self) -> str:
        return self.server.http_url

    def send(self, to: str, **body: Any) -> str:
        answer = httpx.post(
            f"{self.url}/v1/messages",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            json={"from": "shop@example.org", "to": to, "subject": "Your order", **body},
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def status(self, message_id: str) -> str:
        answer = httpx.get(
            f"{self.url}/v1/messages/{message_id}",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        return str(answer.json()["recipients"][0]["status"])

    def until(self, what: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait for a condition outside the browser (the store, the sink)."""
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def wait(self) -> WebDriverWait:  # type: ignore[type-arg]
        # A wait that polls across a form's navigation may read a node of the page
        # being replaced: Chromium then answers "Node with given id does not belong to
        # the document" (a WebDriverException, not a stale element; seen once in CI).
        # Polled again; a condition that never holds still ends in a timeout.
        return WebDriverWait(self.driver, WAIT, ignored_exceptions=(WebDriverException,))

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def shot(self, name: str) -> None:
        """The page as docs/screenshots/<name>.png, whole, with MAILGATE_SCREENSHOTS=1."""
        if os.environ.get("MAILGATE_SCREENSHOTS") != "1":
            return
        SHOTS.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1280, min(max(int(height), 800), 2400))
        self.driver.save_screenshot(str(SHOTS / f"{name}.png"))
        self.driver.set_window_size(1280, 900)


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    found = Listener()

    class Record(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/control":
                body = found.page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            found.hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, listener: Listener, driver: WebDriver
) -> Iterator[World]:
    ca = trustme.CA()
    dns, zone, dns_port = start_dns()
    script = Script()
    sink_port = free_port()
    sink = SinkController(script, sink_port)
    sink.start()
    zone.add(INBOX, "MX", (10, f"mx.{INBOX}"))
    zone.add(f"mx.{INBOX}", "A", "127.0.0.1")
    # a deferred recipient waits ten minutes: only "retry now" brings it back in the test
    config = mail_config(
        tmp_path_factory.mktemp("browser"),
        ca,
        dns_port,
        sink_port,
        delivery={"retry_first": 600},
        webhooks={"allow_http": True, "allow_private_networks": ["127.0.0.0/8"], "timeout": 5.0},
    )
    try:
        for server in start_server(config, ca):
            _, admin = server.call(lambda s: keys.create_key(s, "ops", [Scope.ADMIN, Scope.SEND]))
            world = World(server, admin, script, listener, driver, zone)
            sign_in(world)
            yield world
    finally:
        sink.stop()
        dns.stop()
        dns.server.server_close()


def sign_in(world: World) -> None:
    world.open("/ui/messages")  # no session: to the sign-in page
    world.wait().until(ec.presence_of_element_located((By.ID, "key")))
    assert "/ui/signin" in world.driver.current_url
    world.shot("signin")
    world.driver.find_element(By.ID, "key").send_keys(world.admin_key)
    world.driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "form.search")))
    assert world.driver.current_url.endswith("/ui/messages")
    assert world.admin_key not in world.driver.current_url


def test_find_a_message_by_recipient_and_read_its_timeline(world: World) -> None:
    for n in range(3):
        world.send(f"someone{n}@{INBOX}", text="other mail", tags=["newsletter"])
    message_id = world.send(f"alice@{INBOX}", text="Your order has shipped.", tags=["orders"])
    world.until(lambda: world.status(message_id) == "delivered")
    d = world.driver
    world.open("/ui/messages")
    box = world.wait().until(ec.presence_of_element_located((By.NAME, "recipient")))
    world.shot("messages")
    box.send_keys(f"alice@{INBOX}")
    d.find_element(By.CSS_SELECTOR, "form.search button[type=submit]").click()
    world.wait().until(ec.url_contains("recipient=alice"))
    rows = d.find_elements(By.CSS_SELECTOR, "table.messages tbody tr")
    assert len(rows) == 1
    assert f"alice@{INBOX}" in rows[0].text and "delivered" in rows[0].text
    rows[0].find_element(By.CSS_SELECTOR, "td.subject a").click()
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "ol.timeline")))
    assert d.current_url.endswith(f"/ui/messages/{message_id}")
    kinds = [e.text for e in d.find_elements(By.CSS_SELECTOR, "ol.timeline .kind")]
    assert kinds == ["accepted", "delivered"]
    recipient = d.find_element(By.CSS_SELECTOR, "table.recipients tbody tr").text
    assert "delivered" in recipient and "250" in recipient  # status and last reply
    assert "Your order has shipped." in d.find_element(By.CSS_SELECTOR, "pre.body").text
    world.shot("message")


def test_retry_a_deferred_recipient_from_the_queue(world: World) -> None:
    message_id = world.send(f"tempfail-once-bob@{INBOX}", text="Try again")
    world.until(lambda: world.status(message_id) == "deferred")
    d = world.driver
    world.open("/ui/queue")
    link = world.wait().until(ec.presence_of_element_located((By.LINK_TEXT, INBOX)))
    link.click()
    row = world.wait().until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "table.waiting tbody tr"))
    )
    assert f"tempfail-once-bob@{INBOX}" in row.text and "450" in row.text
    world.shot("queue")
    row.find_element(By.XPATH, ".//button[text()='Retry now']").click()
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "p.notice")))
    assert "route=" in d.current_url  # back on the route's page
    world.until(lambda: world.status(message_id) == "delivered")
    world.open(f"/ui/messages/{message_id}")
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "ol.timeline")))
    kinds = [e.text for e in d.find_elements(By.CSS_SELECTOR, "ol.timeline .kind")]
    assert kinds == ["accepted", "deferred", "retry_now", "delivered"]


def test_create_a_key_then_revoke_it(world: World) -> None:
    d = world.driver
    world.open("/ui/keys")
    name = world.wait().until(ec.presence_of_element_located((By.NAME, "name")))
    name.send_keys("reporting")
    d.find_element(By.CSS_SELECTOR, "input[name=scopes][value=send]").click()  # off
    d.find_element(By.CSS_SELECTOR, "input[name=scopes][value=read]").click()  # on
    d.find_element(By.XPATH, "//button[text()='Create key']").click()
    secret = world.wait().until(ec.presence_of_element_located((By.ID, "new-secret"))).text
    assert secret.startswith("mg_") and secret not in d.current_url
    world.shot("keys")
    reads = httpx.get(f"{world.url}/v1/messages", headers={"Authorization": f"Bearer {secret}"})
    assert reads.status_code == 200
    key_id = secret.split("_")[1]
    d.get(world.url + "/ui/keys")  # the secret is not shown again
    world.wait().until(ec.presence_of_element_located((By.ID, f"key-{key_id}")))
    assert secret not in d.page_source
    d.find_element(By.CSS_SELECTOR, f"#key-{key_id} button").click()
    world.wait().until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.notice"), "revoked"))
    assert "revoked" in d.find_element(By.ID, f"key-{key_id}").text
    after = httpx.get(f"{world.url}/v1/messages", headers={"Authorization": f"Bearer {secret}"})
    assert after.status_code == 401


def hostile_html(listener: Listener) -> str:
    """Every way an HTML body might run script or load something from elsewhere."""
    u = listener.url
    return f"""<html><head><title>mail</title>
<meta http-equiv="refresh" content="1;url={u("refresh")}">
<link rel="stylesheet" href="{u("link-css")}">
<style>@import url("{u("import-css")}"); body {{ background: url("{u("bg")}"); }}</style>
</head><body>
<p id="visible">Quarterly report</p>
<script>window.pwned = 1; document.title = "pwned";
try {{ top.document.title = "pwned"; top.pwned = 1; }} catch (e) {{}}
fetch("{u("fetch")}");</script>
<img src="missing" onerror="document.title='pwned'; new Image().src='{u("onerror")}';
try {{ top.document.title = 'pwned' }} catch (e) {{}}">
<img src="{u("pixel.png")}">
<svg onload="new Image().src='{u("svg")}'"></svg>
<iframe src="{u("frame")}"></iframe>
</body></html>"""


def test_a_hostile_html_body_runs_nothing(world: World) -> None:
    d, listener = world.driver, world.listener
    html = hostile_html(listener)
    # the control: the same HTML as a page of its own runs and calls home
    listener.page = html
    d.get(listener.url("control"))
    world.wait().until(lambda _: d.title == "pwned")
    world.until(lambda: "/fetch" in listener.hits and "/onerror" in listener.hits)
    listener.hits.clear()

    message_id = world.send(f"carol@{INBOX}", html=html, text="Quarterly report")
    world.open(f"/ui/messages/{message_id}")
    frame = world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe.email")))
    assert frame.get_attribute("sandbox") == ""  # no allow-scripts, no allow-same-origin
    title = d.title
    d.switch_to.frame(frame)
    try:  # the HTML is shown: its text is there
        world.wait().until(ec.text_to_be_present_in_element((By.ID, "visible"), "Quarterly"))
        assert d.execute_script("return window.pwned") is None
    finally:
        d.switch_to.default_content()
    world.shot("message-html")
    assert d.title == title and "pwned" not in d.title
    assert d.execute_script("return window.pwned") is None
    # opened on its own, outside the frame, it still runs nothing
    world.open(f"/ui/messages/{message_id}/html")
    world.wait().until(ec.text_to_be_present_in_element((By.ID, "visible"), "Quarterly"))
    assert d.execute_script("return window.pwned") is None
    assert d.title != "pwned"
    # a payload that ran would have reached the listener by now: the control's did at once
    world.open("/ui/messages")  # one more round trip for any late request
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "form.search")))
    assert listener.hits == []
    policy = [
        e["message"] for e in d.get_log("browser") if "Content Security Policy" in e["message"]
    ]
    assert policy  # the browser itself reports what the policy refused


def test_docs_show_swagger_ui_with_nothing_from_elsewhere(world: World) -> None:
    d = world.driver
    world.open("/docs")
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info")))
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    assert "mailgate" in d.find_element(By.CSS_SELECTOR, ".swagger-ui .info").text
    loaded = d.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name })"
    )
    assert loaded and all(str(u).startswith(world.url) for u in loaded), loaded
    world.shot("docs")


def test_the_overview_draws_its_charts(world: World) -> None:
    message_id = world.send(f"dora@{INBOX}", text="Counted")
    world.until(lambda: world.status(message_id) == "delivered")
    d = world.driver
    world.open("/ui/")  # the landing page
    world.wait().until(ec.presence_of_element_located((By.ID, "period-week")))
    assert d.current_url.endswith("/ui/overview")
    charts = d.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 3 and all(c.size["height"] > 50 for c in charts)
    assert d.find_elements(By.CSS_SELECTOR, "#period-hour rect.bar.delivered")
    totals = d.find_element(By.CSS_SELECTOR, "#period-day ul.totals").text
    assert "accepted" in totals and "delivered" in totals
    assert "%" in d.find_element(By.ID, "rate-day").text
    world.shot("overview")


def test_add_then_remove_a_suppression(world: World) -> None:
    d = world.driver
    world.open("/ui/suppressions")
    box = world.wait().until(ec.presence_of_element_located((By.NAME, "address")))
    box.send_keys(f"<script>window.pwned=1</script>@{INBOX}")  # refused, shown as text
    d.find_element(By.XPATH, "//button[text()='Add']").click()
    problem = world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "p.problem")))
    assert "address" in problem.text
    assert d.execute_script("return window.pwned") is None
    box = d.find_element(By.NAME, "address")
    box.clear()
    box.send_keys(f"erin@{INBOX}")
    d.find_element(By.XPATH, "//button[text()='Add']").click()
    world.wait().until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.notice"), "Added"))
    row = d.find_element(
        By.XPATH, f"//table[contains(@class,'suppressions')]//tr[td='erin@{INBOX}']"
    )
    assert "manual" in row.text
    world.shot("suppressions")
    message_id = world.send(f"erin@{INBOX}", text="Stopped")
    world.until(lambda: world.status(message_id) == "suppressed")
    row.find_element(By.XPATH, ".//button[text()='Remove']").click()
    world.wait().until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.notice"), "Removed"))
    assert f"erin@{INBOX}" not in d.find_element(By.TAG_NAME, "main").text


def test_webhook_attempts_and_replay(world: World) -> None:
    listener, d = world.listener, world.driver
    made = httpx.post(
        f"{world.url}/v1/webhooks",
        headers={"Authorization": f"Bearer {world.admin_key}"},
        json={
            "url": listener.url("hook"),
            "events": ["message.delivered"],
            "description": "ops <script>window.pwned=1</script>",
        },
    )
    assert made.status_code in (200, 201), made.text
    hook_id = made.json()["id"]
    message_id = world.send(f"frank@{INBOX}", text="Hooked")
    world.until(lambda: world.status(message_id) == "delivered")
    world.until(lambda: listener.hits.count("/hook") == 1)
    world.open("/ui/webhooks")
    row = world.wait().until(ec.presence_of_element_located((By.ID, f"hook-{hook_id}")))
    assert "ops <script>window.pwned=1</script>" in row.text  # shown as text, not run
    assert d.execute_script("return window.pwned") is None
    row.find_element(By.TAG_NAME, "a").click()
    attempt = world.wait().until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "table.attempts tbody tr"))
    )
    assert "204" in attempt.text and "evt_" in attempt.text
    world.shot("webhooks")
    attempt.find_element(By.XPATH, ".//button[text()='Replay']").click()
    notice = world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "p.notice")))
    assert "queued again for 1 endpoint" in notice.text
    world.until(lambda: listener.hits.count("/hook") == 2)


def test_verify_a_sending_domain(world: World) -> None:
    d = world.driver
    world.open("/ui/domains")
    box = world.wait().until(ec.presence_of_element_located((By.NAME, "name")))
    box.send_keys("brand.example")
    d.find_element(By.XPATH, "//button[text()='Add domain']").click()
    section = world.wait().until(ec.presence_of_element_located((By.ID, "d-brand.example")))
    assert "pending" in section.text and "never checked" in section.text
    added = httpx.get(
        f"{world.url}/v1/domains/brand.example",
        headers={"Authorization": f"Bearer {world.admin_key}"},
    ).json()
    for r in added["records"]:  # publish what the page says to publish
        value: Any = r["value"]
        if r["type"] == "MX":
            pref, host = value.split()
            value = (int(pref), host)
        world.zone.add(r["name"], r["type"], value)
    section.find_element(By.XPATH, ".//button[text()='Verify']").click()
    world.wait().until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.notice"), "Checked"))
    section = d.find_element(By.ID, "d-brand.example")
    assert section.find_element(By.CSS_SELECTOR, "h2 .status").text == "verified"
    assert "its mail is signed" in section.text
    world.shot("domains")


@pytest.fixture(scope="module")
def capturing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A second server, in capture mode, reached as `localhost` (its own cookies: the
    other server's session at 127.0.0.1 stays)."""
    ca = trustme.CA()
    base = make_config(tmp_path_factory.mktemp("capture"), ca)
    data = base.model_dump()
    for section in ("smtp", "http"):  # the deprecated spellings of accept.max_recipients
        del data[section]["max_recipients"]
    data["server"]["delivery_process"] = False
    data["delivery"] = {"enabled": True, "mode": "capture", "retry_first": 1}
    for server in start_server(type(base).model_validate(data), ca):
        _, admin = server.call(lambda s: keys.create_key(s, "ops", [Scope.ADMIN, Scope.SEND]))
        yield World(server, admin, Script(), Listener(), None)  # type: ignore[arg-type]


def test_captured_mail(world: World, capturing: World) -> None:
    d = world.driver
    base = capturing.url.replace("127.0.0.1", "localhost")
    message_id = capturing.send(
        "grace@example.com",
        subject="<script>window.pwned=1</script> Welcome",
        html="<p id='visible'>Hello Grace</p>",
    )
    capturing.until(lambda: capturing.status(message_id) == "delivered")
    d.get(base + "/ui/captured")
    world.wait().until(ec.presence_of_element_located((By.ID, "key"))).send_keys(
        capturing.admin_key
    )
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    row = world.wait().until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "table.captured tbody tr"))
    )
    assert d.current_url.endswith("/ui/captured")
    assert "<script>window.pwned=1</script> Welcome" in row.text  # as text
    assert "grace@example.com" in row.text
    assert d.execute_script("return window.pwned") is None
    assert d.find_element(By.LINK_TEXT, "Captured mail").get_attribute("aria-current") == "page"
    world.shot("captured")
    row.find_element(By.CSS_SELECTOR, "td.subject a").click()
    world.wait().until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe.email")))
    recipient = d.find_element(By.CSS_SELECTOR, "table.recipients tbody tr").text
    assert "delivered" in recipient and "Captured" in recipient
    # the first server's session is untouched (127.0.0.1 and localhost keep apart cookies)
    world.open("/ui/overview")
    world.wait().until(ec.presence_of_element_located((By.ID, "period-week")))
    assert "Captured mail" not in d.find_element(By.CSS_SELECTOR, "header.top nav").text
