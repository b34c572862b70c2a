"""Secrets kept in the database (DKIM private keys; later mailbox credentials) are
encrypted with one key: `server.secret_key`, or a key file made in the data directory on
first use, readable by mailgate's user alone. Fernet (AES-128-CBC + HMAC-SHA256, from
`cryptography`): what is stored cannot be read, nor changed unnoticed, without the key.

Every node of a PostgreSQL cluster needs the same key (set `server.secret_key`)."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mailgate.errors import ConfigError

log = logging.getLogger("mailgate.secretbox")
KEY_FILE = "secret.key"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as e:
            raise ConfigError("server.secret_key: expected 32 url-safe base64 bytes") from e

    @classmethod
    def open(cls, configured: str, data_dir: Path) -> SecretBox:
        """The configured key, else the data directory's key file (made if absent)."""
        if configured:
            return cls(configured.encode())
        return cls(key_file(data_dir / KEY_FILE))

    def seal(self, secret: bytes) -> str:
        return self._fernet.encrypt(secret).decode("ascii")

    def unseal(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except InvalidToken as e:
            raise ConfigError(
                "a stored secret cannot be decrypted: server.secret_key (or the data"
                " directory's secret.key) is not the key it was stored with"
            ) from e


def key_file(path: Path) -> bytes:
    """Read the key file, or make it: written whole to a temporary file (mode 0600) and
    linked into place, so a process that finds the file finds the key in it, and two
    processes starting together end up with the one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process linked its key first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    key = path.read_bytes().strip()
    if not key:
        raise ConfigError(f"{path} is empty: restore it from a backup (it seals the DKIM keys)")
    return key
