"""Secrets kept in the database (DKIM private keys; later mailbox credentials) are
encrypted with one key: `server.secret_key`, or a key file made in the data directory on
first use, readable by mailgate's user alone. Fernet (AES-128-CBC + HMAC-SHA256, from
`cryptography`): what is stored cannot be read, nor changed unnoticed, without the key.

Every node of a PostgreSQL cluster needs the same key (set `server.secret_key`)."""

from __future__ import annotations

import logging
import os
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
    """Read the key file, or make it (mode 0600, created exclusively: two processes
    starting together end up with the one key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", path)
        for _ in range(50):  # a process that just made it may not have written it yet
            key = path.read_bytes().strip()
            if key:
                return key
            os.sched_yield()
        raise ConfigError(f"{path} is empty: remove it to have a new key made") from None
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key
