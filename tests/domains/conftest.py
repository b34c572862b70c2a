"""A real mailgate (HTTP, SMTP relay, delivery) with a DNS server on loopback that
publishes sending domains' records, and an SMTP sink that receives what it delivers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from mailgate import keys
from mailgate.models import Scope
from tests.delivery.conftest import dns_zone, free_port
from tests.delivery.peers import Received, Script, SinkController, ZoneResolver, start_dns
from tests.ingress.conftest import RunningServer, make_config, start_server

__all__ = ["dns_zone"]  # a fixture for the tests here, by name
INBOX = "inbox.test"  # recipients' domain: its MX is the sink


@dataclass
class Mail:
    """The running server, its DNS zone and the mail its sink received."""

    server: RunningServer
    zone: ZoneResolver
    dns_port: int
    script: Script
    admin_key: str
    http: httpx.Client

    def publish(self, domain: dict[str, Any], only: tuple[str, ...] = ()) -> None:
        """Put the records a domain answer lists (or only those ids) in DNS."""
        for r in domain["records"]:
            if only and r["id"] not in only:
                continue
            value: Any = r["value"]
            if r["type"] == "MX":
                pref, host = value.split()
                value = (int(pref), host)
            self.zone.add(r["name"], r["type"], value)

    def unpublish(self, name: str) -> None:
        self.zone.records.pop(name.lower(), None)

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        return self.http.request(method, path, headers=headers, **kw)

    def add_verified(self, name: str) -> dict[str, Any]:
        added = self.admin("POST", "/v1/domains", json={"name": name})
        assert added.status_code == 201, added.text
        self.publish(added.json())
        verified = self.admin("POST", f"/v1/domains/{name}/verify")
        assert verified.status_code == 200, verified.text
        assert verified.json()["sending"], verified.json()
        return verified.json()

    def received(self, count: int, timeout: float = 30) -> list[Received]:
        """Wait until the sink has `count` messages (delivery is asynchronous)."""
        deadline = time.monotonic() + timeout
        while len(self.script.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.script.received) >= count, self.script.received
        return list(self.script.received)


def mail_config(tmp: Path, ca: trustme.CA, dns_port: int, sink_port: int, **domains: Any) -> Any:
    base = make_config(tmp, ca)
    data = base.model_dump()
    for section in ("smtp", "http"):  # the deprecated spellings of accept.max_recipients
        del data[section]["max_recipients"]
    data["server"]["delivery_process"] = False  # a config made here reaches no child
    data["delivery"] = {
        "enabled": True,
        "resolver": f"127.0.0.1:{dns_port}",
        "port": sink_port,
        "allow_private_networks": ["127.0.0.0/8"],
        "tls": "none",
        "retry_first": 1,
        **domains.pop("delivery", {}),
    }
    data["webhooks"] = domains.pop("webhooks", {})
    data["domains"] = domains
    return type(base).model_validate(data)


@pytest.fixture
def mail(tmp_path: Path, ca: trustme.CA, request: pytest.FixtureRequest) -> Iterator[Mail]:
    # [domains] settings, and "webhooks" and "delivery" (merged into the test's own)
    domains = dict(getattr(request, "param", {}))
    dns, zone, dns_port = start_dns()
    script = Script()
    sink_port = free_port()
    sink = SinkController(script, sink_port)
    sink.start()
    zone.add(INBOX, "MX", (10, f"mx.{INBOX}"))
    zone.add(f"mx.{INBOX}", "A", "127.0.0.1")
    config = mail_config(tmp_path, ca, dns_port, sink_port, **domains)
    try:
        for server in start_server(config, ca):
            _, admin = server.call(lambda s: keys.create_key(s, "admin", [Scope.ADMIN, Scope.SEND]))
            with httpx.Client(base_url=server.http_url, timeout=30) as http:
                yield Mail(server, zone, dns_port, script, admin, http)
    finally:
        sink.stop()
        dns.stop()
        dns.server.server_close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()
