"""A real mailgate for the dashboard's tests (HTTP and SMTP in process, as the ingress
tests run it), an admin key, and signing in the way a browser does: the sign-in page's
token and cookie, then the form."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from mailgate import keys
from mailgate.models import Scope
from tests.ingress.conftest import RunningServer, make_config, start_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Dashboard:
    server: RunningServer
    admin_key: str

    @property
    def url(self) -> str:
        return self.server.http_url

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)

    def new_admin(self, name: str = "admin") -> str:
        _, secret = self.server.call(lambda s: keys.create_key(s, name, [Scope.ADMIN]))
        return secret


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    """The sign-in form sent with `key`: its answer (303 and a session, or the form again)."""
    form = client.get("/ui/signin")
    assert form.status_code == 200, form.text
    return client.post("/ui/signin", data={"key": key, "csrf": csrf_of(form)})


@contextlib.contextmanager
def signed_in(dash: Dashboard, key: str | None = None) -> Iterator[tuple[httpx.Client, str]]:
    """A client with a session, and that session's CSRF token."""
    with dash.client() as client:
        answer = sign_in(client, key or dash.admin_key)
        assert answer.status_code == 303, answer.text
        page = client.get("/ui/keys")
        assert page.status_code == 200, page.text
        yield client, csrf_of(page)


def start(tmp: Path, ca: trustme.CA, **http: object) -> Iterator[Dashboard]:
    # three failures lock an address: the guard's test reaches the lock quickly
    config = make_config(tmp, ca, http=dict(http), auth={"failures_per_ip": 3})
    for server in start_server(config, ca):
        _, admin = server.call(lambda s: keys.create_key(s, "admin", [Scope.ADMIN, Scope.SEND]))
        yield Dashboard(server, admin)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Dashboard]:
    yield from start(tmp_path_factory.mktemp("dash"), ca)


@pytest.fixture
def fresh(tmp_path: Path, ca: trustme.CA) -> Iterator[Dashboard]:
    """A server of the test's own (the guard's lockout must not reach the others)."""
    yield from start(tmp_path, ca)


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    """Debian's Chromium, headless, through its chromedriver (one for each module)."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI needs Debian's chromium and chromium-driver (.ci/run)")
        pytest.skip("chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()  # ends chromedriver and its Chromium
