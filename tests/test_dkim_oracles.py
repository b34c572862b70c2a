"""The DKIM oracles (tests/dkim_oracles.py) can pass and can fail: messages signed with
dkimpy (rsa-sha256 with RSA-2048, ed25519-sha256 per RFC 8463), keys in TXT records served
by the loopback DNS server, then altered or unpublished."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.delivery.peers import ZoneResolver, start_dns
from tests.dkim_oracles import Verdict, dkimpy, mail_dkim

Oracle = Callable[[bytes, int], list[Verdict]]
ORACLES = [pytest.param(mail_dkim, id="mail_dkim"), pytest.param(dkimpy, id="dkimpy")]

DOMAIN = "signer.test"
RSA_SELECTOR = "rsa2048"
ED_SELECTOR = "ed1"
MESSAGE = (
    b"From: Alice <alice@signer.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: quarterly figures\r\n"
    b"Date: Thu, 01 Jan 2026 12:00:00 +0000\r\n"
    b"Message-ID: <oracle-1@signer.test>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"the figures are attached in spirit.\r\n"
)


@dataclass(frozen=True)
class Keys:
    rsa_private_pem: bytes
    rsa_txt: str
    ed_private_b64: bytes
    ed_txt: str


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_seed = ed_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    ed_public = ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return Keys(
        rsa_private_pem=rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        rsa_txt=f"v=DKIM1; k=rsa; p={base64.b64encode(rsa_spki).decode()}",
        ed_private_b64=base64.b64encode(ed_seed),
        ed_txt=f"v=DKIM1; k=ed25519; p={base64.b64encode(ed_public).decode()}",
    )


@pytest.fixture(scope="module")
def dns_server() -> Iterator[tuple[ZoneResolver, int]]:
    server, zone, port = start_dns()  # one for the module: stopping one takes 0.5 s
    yield zone, port
    server.stop()
    server.server.server_close()


@pytest.fixture
def dns_zone(
    keys: Keys, dns_server: tuple[ZoneResolver, int]
) -> Iterator[tuple[ZoneResolver, int]]:
    """The two keys published, afresh for each test."""
    zone, port = dns_server
    zone.records.clear()
    zone.queries.clear()
    zone.add(f"{RSA_SELECTOR}._domainkey.{DOMAIN}", "TXT", keys.rsa_txt)
    zone.add(f"{ED_SELECTOR}._domainkey.{DOMAIN}", "TXT", keys.ed_txt)
    yield zone, port
    zone.records.clear()


@pytest.fixture(scope="module")
def signed(keys: Keys) -> bytes:
    """MESSAGE with an rsa-sha256 and an ed25519-sha256 signature on top, in that order."""
    relaxed = (b"relaxed", b"relaxed")
    rsa_sig = dkim.sign(
        MESSAGE,
        RSA_SELECTOR.encode(),
        DOMAIN.encode(),
        keys.rsa_private_pem,
        signature_algorithm=b"rsa-sha256",
        canonicalize=relaxed,
    )
    ed_sig = dkim.sign(
        MESSAGE,
        ED_SELECTOR.encode(),
        DOMAIN.encode(),
        keys.ed_private_b64,
        signature_algorithm=b"ed25519-sha256",
        canonicalize=relaxed,
    )
    assert isinstance(rsa_sig, bytes) and isinstance(ed_sig, bytes)
    return rsa_sig + ed_sig + MESSAGE


def results(verdicts: list[Verdict]) -> list[tuple[str, str, str, str]]:
    return [(v.result, v.domain, v.selector, v.algorithm) for v in verdicts]


def expected(result: str) -> list[tuple[str, str, str, str]]:
    return [
        (result, DOMAIN, RSA_SELECTOR, "rsa-sha256"),
        (result, DOMAIN, ED_SELECTOR, "ed25519-sha256"),
    ]


@pytest.mark.parametrize("oracle", ORACLES)
def test_both_signatures_pass(
    oracle: Oracle, signed: bytes, dns_zone: tuple[ZoneResolver, int]
) -> None:
    zone, port = dns_zone
    verdicts = oracle(signed, port)
    assert results(verdicts) == expected("pass"), verdicts
    assert (f"{ED_SELECTOR}._domainkey.{DOMAIN}", "TXT") in zone.queries


@pytest.mark.parametrize("oracle", ORACLES)
def test_one_body_byte_changed_fails_both(
    oracle: Oracle, signed: bytes, dns_zone: tuple[ZoneResolver, int]
) -> None:
    altered = signed.replace(b"figures are", b"figures arE")
    assert altered != signed
    verdicts = oracle(altered, dns_zone[1])
    assert results(verdicts) == expected("fail"), verdicts


@pytest.mark.parametrize("oracle", ORACLES)
def test_changed_subject_fails_both(
    oracle: Oracle, signed: bytes, dns_zone: tuple[ZoneResolver, int]
) -> None:
    altered = signed.replace(b"Subject: quarterly figures", b"Subject: quarterly figureS")
    assert altered != signed
    verdicts = oracle(altered, dns_zone[1])
    assert results(verdicts) == expected("fail"), verdicts


@pytest.mark.parametrize("oracle", ORACLES)
def test_unpublished_key_does_not_pass(
    oracle: Oracle, signed: bytes, dns_zone: tuple[ZoneResolver, int]
) -> None:
    zone, port = dns_zone
    del zone.records[f"{RSA_SELECTOR}._domainkey.{DOMAIN}"]
    del zone.records[f"{ED_SELECTOR}._domainkey.{DOMAIN}"]
    verdicts = oracle(signed, port)
    assert [(v.domain, v.selector, v.algorithm) for v in verdicts] == [
        row[1:] for row in expected("pass")
    ]
    for verdict in verdicts:
        assert verdict.result in {"invalid", "temperror", "permerror", "none"}, verdict


def test_long_txt_is_one_record_of_255_byte_strings(
    keys: Keys, dns_zone: tuple[ZoneResolver, int]
) -> None:
    zone, port = dns_zone
    zone.add("split.test", "TXT", ["v=DKIM1; ", "k=ed25519"])

    def strings(name: str) -> list[bytes]:
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=3).answer
        assert len(answer) == 1 and len(answer[0]) == 1  # one RRset of one record
        return list(next(iter(answer[0])).strings)

    rsa_strings = strings(f"{RSA_SELECTOR}._domainkey.{DOMAIN}")
    assert len(keys.rsa_txt) > 255
    assert [len(s) for s in rsa_strings[:-1]] == [255] * (len(rsa_strings) - 1)
    assert b"".join(rsa_strings) == keys.rsa_txt.encode()
    assert strings("split.test") == [b"v=DKIM1; ", b"k=ed25519"]
