"""Story: hypothesis throws generated addresses (dot-atoms, quoted and UTF-8 local parts,
over-long parts, labels of 1 to 80 octets, IDNA-valid and invalid Unicode, zero-width and
other format characters, hyphens at the ends, many labels, address literals) at both
doors of a real running server that delivers in MX mode through a DNS server on
loopback. Every answer is a clean refusal or an acceptance, and afterwards the queue
still delivers good mail (issue 11, finding 1 and its class)."""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.config import Config
from mailgate.models import NewMessage, Source
from tests.delivery.conftest import free_port
from tests.delivery.peers import Script, SinkController, start_dns
from tests.ingress.conftest import RunningServer, make_config, start_server

GOOD = "good.test"
SENDER = f"sender@{GOOD}"
ENHANCED = re.compile(r"^[45]\.\d{1,3}\.\d{1,3} ")

# -- addresses --------------------------------------------------------------------------
ATEXT = "abcxyzABC0189!#$&'*+/=?^_`{|}~-"
FORMAT_CHARS = "\u200b\u200c\u200d\u00ad\u2060\ufeff\u202e\u061c"
ldh = st.text("abz09-", min_size=1, max_size=80)
unicode_label = st.text(
    st.characters(categories=["Ll", "Lu", "Lo", "Mn", "Nd"]), min_size=1, max_size=20
)
hyphened = st.builds(lambda s, a, b: a + s + b, ldh, st.sampled_from(["-", ""]), st.just("-"))
with_format = st.builds(
    lambda s, c, i: s[:i] + c + s[i:], ldh, st.sampled_from(FORMAT_CHARS), st.integers(0, 5)
)
label = st.one_of(ldh, unicode_label, hyphened, with_format, st.just("xn--zz"), st.just(""))
named_domain = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(label, min_size=1, max_size=4),
    st.sampled_from(["test", "example", "ex-ample", "bücher", "a" * 64]),
)
many_labels = st.integers(100, 140).map(lambda n: "a." * n + "test")
literal = st.sampled_from(
    [
        "[127.0.0.1]",
        "[127.0.0.2]",
        "[10.0.0.1]",
        "[100.100.100.200]",
        "[IPv6:::1]",
        "[IPv6:fe80::1]",
        "[IPv6:2002:7f00::1]",
        "[999.1.1.1]",
        "[IPv6:zz]",
        "[1.2.3]",
    ]
)
domain = st.one_of(st.just(GOOD), named_domain, many_labels, literal)
dot_atom = st.lists(st.text(ATEXT, min_size=1, max_size=20), min_size=1, max_size=4).map(".".join)
quoted = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
utf8_local = st.text(
    st.characters(categories=["L", "M", "N", "Cf", "Zs", "P"], exclude_characters="\r\n"),
    min_size=1,
    max_size=30,
)
over_long = st.integers(65, 120).map(lambda n: "l" * n)
local = st.one_of(dot_atom, quoted, utf8_local, over_long)
address = st.one_of(
    st.builds(lambda lp, d: f"{lp}@{d}", local, domain),
    st.builds(lambda lp, d: f"{lp}@@{d}", dot_atom, domain),  # two @
    dot_atom,  # no @ at all
)


# -- the two doors ----------------------------------------------------------------------
def smtp_door(smtp: smtplib.SMTP, rcpt: str) -> bool:
    """One transaction per address, so a refusal never touches the others. True when
    the address was taken."""
    utf8 = "" if rcpt.isascii() else " SMTPUTF8"
    smtp.command_encoding = "utf-8"  # docmd sends the address as it is (rset resets it)
    code, text = smtp.docmd("MAIL", f"FROM:<{SENDER}>{utf8}")
    assert code == 250, (code, text)
    code, reply = smtp.docmd("RCPT", f"TO:<{rcpt}>")
    if code in (250, 251):
        code, reply = smtp.data(b"Subject: generated\r\n\r\nhello\r\n")
        assert code == 250, (rcpt, code, reply)
        return True
    assert 500 <= code < 600, (rcpt, code, reply)  # refused, and why
    assert ENHANCED.match(reply.decode()), (rcpt, code, reply)
    assert smtp.rset()[0] == 250
    return False


def http_door(http: httpx.Client, rcpt: str) -> bool:
    body = {"from": SENDER, "to": [rcpt], "subject": "generated", "text": "hello"}
    r = http.post("/v1/messages", json=body)
    if r.status_code == 202:
        return True
    assert 400 <= r.status_code < 500, (rcpt, r.status_code, r.text)
    error = r.json()["error"]
    assert error["message"] and str(error["field"]).startswith("to"), (rcpt, r.text)
    return False


def queue_behind_the_doors(server: RunningServer, rcpts: list[str]) -> None:
    """The same addresses straight into the store, as a queue from before the doors
    refused them (or an older node sharing PostgreSQL) would hold them."""
    message = NewMessage(
        raw=b"From: sender@good.test\r\nSubject: old queue\r\n\r\nhello\r\n",
        sender=SENDER,
        recipients=tuple(dict.fromkeys(rcpts)),
        source=Source.SMTP,
    )
    server.call(lambda store: store.enqueue(message))


@contextlib.contextmanager
def smtp_session(server: RunningServer) -> Iterator[smtplib.SMTP]:
    ctx = ssl.create_default_context()
    server.ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="gen.test", timeout=30) as s:
        s.starttls(context=ctx)
        s.ehlo()
        s.login("generator", server.send_key)
        yield s


# -- the world --------------------------------------------------------------------------
@contextlib.contextmanager
def delivering_server(tmp: Path, sink_port: int, dns_port: int) -> Iterator[RunningServer]:
    ca = trustme.CA()
    settings_ = make_config(tmp, ca).model_dump()
    settings_["server"]["delivery_process"] = False  # delivery runs in this process
    settings_["delivery"] = {
        "resolver": f"127.0.0.1:{dns_port}",
        "port": sink_port,
        "allow_private_networks": ["127.0.0.0/8"],
        "tls": "none",
        "connect_timeout": 2,
        "command_timeout": 5,
        "data_timeout": 5,
        "retry_first": 600,
    }
    yield from start_server(Config.model_validate(settings_), ca)


def delivered(script: Script, subject: bytes) -> bool:
    with script.lock:
        return any(subject in r.data for r in script.received)


def test_generated_addresses_never_break_a_door_nor_stop_the_queue(tmp_path: Path) -> None:
    dns, zone, dns_port = start_dns()
    zone.add(GOOD, "MX", (10, f"mx.{GOOD}"))
    zone.add(f"mx.{GOOD}", "A", "127.0.0.1")
    script = Script()
    sink = SinkController(script, free_port())
    sink.start()
    try:
        with (
            delivering_server(tmp_path, sink.port, dns_port) as server,
            httpx.Client(
                base_url=server.http_url,
                headers={"Authorization": f"Bearer {server.send_key}"},
                timeout=30,
            ) as http,
        ):

            @settings(
                max_examples=100,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(st.lists(address, min_size=1, max_size=4))
            def both_doors(rcpts: list[str]) -> None:
                with smtp_session(server) as smtp:
                    for rcpt in rcpts:
                        taken[smtp_door(smtp, rcpt)] += 1
                for rcpt in rcpts:
                    taken[http_door(http, rcpt)] += 1
                queue_behind_the_doors(server, rcpts)

            taken = Counter[bool]()
            both_doors()
            assert taken[True] and taken[False], taken  # both answers were exercised
            r = http.post(
                "/v1/messages",
                json={"from": SENDER, "to": [f"final@{GOOD}"], "subject": "final", "text": "x"},
            )
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 120
            while not delivered(script, b"Subject: final"):
                assert time.monotonic() < deadline, "good mail not delivered after the storm"
                time.sleep(0.1)
            delivery = server.app.delivery
            assert delivery is not None and delivery.task is not None
            assert not delivery.task.done(), "delivery stopped"
    finally:
        sink.stop()
        dns.stop()
        dns.server.server_close()
