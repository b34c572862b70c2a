"""TLS material for the listening side: the server context and a development certificate."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from mailgate.config import Config
from mailgate.errors import ConfigError


def server_context(config: Config) -> ssl.SSLContext | None:
    """The relay's TLS context from smtp.tls_cert / smtp.tls_key; None when neither is set."""
    cert, key = config.smtp.tls_cert, config.smtp.tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("config: smtp.tls_cert and smtp.tls_key must be set together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"config: smtp.tls_cert / smtp.tls_key: cannot load: {exc}") from None
    return ctx


def write_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for development (`mailgate init`); the key file is 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
