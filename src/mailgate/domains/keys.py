"""DKIM key pairs: made here, the private half sealed (secretbox.py) before it is
stored, opened only to sign."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Collection

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailgate.domains.dkim import Signer
from mailgate.models import DkimAlgorithm, DkimKey
from mailgate.secretbox import SecretBox

RSA_BITS = 2048
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def new_selector(taken: Collection[str], now: float) -> str:
    """`mg<date>-<4 hex>`: a new one per rotation, never one the domain had."""
    while True:
        stem = f"mg{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(2)}"
        if not any(s.startswith(stem) for s in taken):
            return stem


def public_value(key: PrivateKey) -> str:
    """The p= value: RSA as DER SubjectPublicKeyInfo, Ed25519 as its raw 32 bytes."""
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        der = pub.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    else:
        der = pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return base64.b64encode(der).decode("ascii")


def new_keys(
    domain: str, taken: Collection[str], box: SecretBox, now: float
) -> list[tuple[DkimKey, str]]:
    """One RSA-2048 and one Ed25519 key under one new selector stem (`-rsa`, `-ed`),
    each with its sealed private key."""
    stem = new_selector(taken, now)
    made: list[tuple[DkimKey, str]] = []
    pairs: list[tuple[DkimAlgorithm, str, PrivateKey]] = [
        (DkimAlgorithm.RSA, "rsa", rsa.generate_private_key(65537, RSA_BITS)),
        (DkimAlgorithm.ED25519, "ed", ed25519.Ed25519PrivateKey.generate()),
    ]
    for algorithm, suffix, key in pairs:
        pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        dkim_key = DkimKey(domain, f"{stem}-{suffix}", algorithm, public_value(key), now)
        made.append((dkim_key, box.seal(pem)))
    return made


def open_signer(key: DkimKey, sealed: str, box: SecretBox) -> Signer:
    private = ser.load_pem_private_key(box.unseal(sealed), password=None)
    if not isinstance(private, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"DKIM key {key.selector} is not RSA or Ed25519")
    return Signer(key.domain, key.selector, key.algorithm, private)
