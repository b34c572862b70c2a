"""HTTPS on the API port (issue 17): http.tls serves the SMTP certificate; a client
that verifies it sends mail; plain HTTP on that port gets nowhere; and over plain HTTP a
key is accepted only from http.plain_keys_from (loopback by default: a local proxy)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from tests.ingress.conftest import make_config, start_server

SEND = {"from": "a@example.org", "to": ["b@example.com"], "subject": "s", "text": "t"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_https_with_the_smtp_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    config = make_config(tmp_path, ca, http={"tls": True, "plain_keys_from": []})
    for server in start_server(config, ca):
        port = server.app.http_port
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        auth = {"Authorization": f"Bearer {server.send_key}"}
        with httpx.Client(verify=ctx, timeout=10) as client:
            sent = client.post(f"https://127.0.0.1:{port}/v1/messages", json=SEND, headers=auth)
            assert sent.status_code == 202, sent.text
        with httpx.Client(timeout=10) as client:  # an unknown issuer: refused by the client
            with pytest.raises(httpx.ConnectError):
                client.post(f"https://127.0.0.1:{port}/v1/messages", json=SEND, headers=auth)
            with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port: no answer
                client.post(f"http://127.0.0.1:{port}/v1/messages", json=SEND, headers=auth)


def test_plain_http_takes_keys_only_from_the_allowed_networks(
    tmp_path: Path, ca: trustme.CA
) -> None:
    config = make_config(tmp_path, ca, http={"plain_keys_from": ["10.0.0.0/8"]})
    for server in start_server(config, ca):
        auth = {"Authorization": f"Bearer {server.send_key}"}
        refused = httpx.post(f"{server.http_url}/v1/messages", json=SEND, headers=auth)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "https_required"
        assert httpx.get(f"{server.http_url}/healthz").status_code == 200, "no key: open"
