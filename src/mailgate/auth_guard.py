"""Failed-authentication bookkeeping shared by both doors (SMTP AUTH and HTTP keys).

Brute force is slowed three ways, as Dovecot's auth penalty and Postfix's anvil do: every
failure from an address waits a little longer than the one before; an address with too
many recent failures is refused outright; and a key with too many recent failures is
locked against the addresses that failed on it, so guessing one key's secret from many
addresses fails too. A locked key is answered exactly like a wrong one, so a locked key
tells an attacker nothing.

The key lock holds only for addresses that have themselves failed against that key in
the window: a key's visible id is no secret, so anyone could fail on it at will, and a
lock for everyone would let them lock the rightful owner out. The owner, from an address
with no failure on that key, still gets in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from mailgate.shared import SharedEvents

log = logging.getLogger("mailgate.auth")
FIRST_DELAY = 0.25  # seconds after the first failure; doubles each time
MAX_DOUBLINGS = 4  # the longest wait is 16 times the first
MAX_KEPT = 256  # failures remembered per name (thresholds above this act as this)


class AuthGuard:
    """The failures are kept in tables every process of the server shares (`directory`,
    shared.py): a second ingress process does not double the attempts allowed. Without
    a directory they are this process's own."""

    def __init__(
        self,
        per_ip: int = 10,
        per_key: int = 10,
        window: float = 600.0,
        clock: Callable[[], float] = time.time,
        first_delay: float = FIRST_DELAY,
        directory: Path | None = None,
    ) -> None:
        self.per_ip, self.per_key, self.window, self.clock = per_ip, per_key, window, clock
        self.first_delay = first_delay

        def table(name: str, keep: int) -> SharedEvents:
            path = directory / f"auth-{name}.shm" if directory is not None else None
            return SharedEvents(min(keep, MAX_KEPT), window, path)

        self._by_ip = table("ip", per_ip)
        self._by_key = table("key", per_key)
        self._by_key_ip = table("key-ip", 1)  # "key_id ip": has this address failed on it?

    def tables(self) -> dict[str, SharedEvents]:
        """The failure tables by the name the cluster knows them under (cluster_limits.py)."""
        return {"auth-ip": self._by_ip, "auth-key": self._by_key, "auth-key-ip": self._by_key_ip}

    def ip_locked(self, ip: str) -> bool:
        return len(self._by_ip.recent(ip, self.clock())) >= min(self.per_ip, MAX_KEPT)

    def key_locked(self, key_id: str | None, ip: str | None = None) -> bool:
        """True when attempts on this key from this address are refused: the key has too
        many recent failures and this address is one that failed on it. Without `ip`
        (the older call) the key is locked for every address."""
        now = self.clock()
        if key_id is None or len(self._by_key.recent(key_id, now)) < min(self.per_key, MAX_KEPT):
            return False
        return ip is None or bool(self._by_key_ip.recent(f"{key_id} {ip}", now))

    def retry_after(self, ip: str) -> int:
        """Seconds until the oldest failure of a locked address leaves the window."""
        now = self.clock()
        times = self._by_ip.recent(ip, now)
        return max(1, int(times[0] + self.window - now) + 1) if times else 1

    def failed(self, ip: str, key_id: str | None) -> float:
        """Record a failure; the delay (seconds) to wait before answering it."""
        now = self.clock()
        # the key id names a key, never its secret: safe to log (fail2ban can read this)
        log.info("auth: failed authentication from %s (key %s)", ip, key_id or "unknown")
        n = self._by_ip.add(ip, now)
        if key_id is not None:
            self._by_key_ip.add(f"{key_id} {ip}", now)
            if self._by_key.add(key_id, now) == self.per_key:
                log.warning("auth: key %s locked after %d failures", key_id, self.per_key)
        if n == self.per_ip:
            log.warning("auth: %s locked out after %d failures", ip, n)
        return self.first_delay * 2.0 ** min(n - 1, MAX_DOUBLINGS)
