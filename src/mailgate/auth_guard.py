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
from collections import defaultdict, deque
from collections.abc import Callable

log = logging.getLogger("mailgate.auth")
FIRST_DELAY = 0.25  # seconds after the first failure; doubles each time
MAX_DOUBLINGS = 4  # the longest wait is 16 times the first


class AuthGuard:
    def __init__(
        self,
        per_ip: int = 10,
        per_key: int = 10,
        window: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        first_delay: float = FIRST_DELAY,
    ) -> None:
        self.per_ip, self.per_key, self.window, self.clock = per_ip, per_key, window, clock
        self.first_delay = first_delay
        self._by_ip: dict[str, deque[float]] = defaultdict(deque)
        self._by_key: dict[str, deque[float]] = defaultdict(deque)
        self._by_key_ip: dict[str, deque[float]] = defaultdict(deque)  # "key_id ip"
        self._failures = 0

    def _recent(self, table: dict[str, deque[float]], name: str) -> int:
        if name not in table:
            return 0
        q, cutoff = table[name], self.clock() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            del table[name]
            return 0
        return len(q)

    def _sweep(self) -> None:
        """Forget names whose failures all left the window (many addresses, each seen
        once, would otherwise be kept forever)."""
        for table in (self._by_ip, self._by_key, self._by_key_ip):
            for name in list(table):
                self._recent(table, name)

    def ip_locked(self, ip: str) -> bool:
        return self._recent(self._by_ip, ip) >= self.per_ip

    def key_locked(self, key_id: str | None, ip: str | None = None) -> bool:
        """True when attempts on this key from this address are refused: the key has too
        many recent failures and this address is one that failed on it. Without `ip`
        (the older call) the key is locked for every address."""
        if key_id is None or self._recent(self._by_key, key_id) < self.per_key:
            return False
        return ip is None or self._recent(self._by_key_ip, f"{key_id} {ip}") > 0

    def retry_after(self, ip: str) -> int:
        """Seconds until the oldest failure of a locked address leaves the window."""
        q = self._by_ip.get(ip)
        return max(1, int(q[0] + self.window - self.clock()) + 1) if q else 1

    def failed(self, ip: str, key_id: str | None) -> float:
        """Record a failure; the delay (seconds) to wait before answering it."""
        now = self.clock()
        # the key id names a key, never its secret: safe to log (fail2ban can read this)
        log.info("auth: failed authentication from %s (key %s)", ip, key_id or "unknown")
        self._by_ip[ip].append(now)
        n = self._recent(self._by_ip, ip)
        if key_id is not None:
            self._by_key[key_id].append(now)
            self._by_key_ip[f"{key_id} {ip}"].append(now)
            if self._recent(self._by_key, key_id) == self.per_key:
                log.warning("auth: key %s locked after %d failures", key_id, self.per_key)
        if n == self.per_ip:
            log.warning("auth: %s locked out after %d failures", ip, n)
        self._failures += 1
        if self._failures % 1024 == 0:
            self._sweep()
        return self.first_delay * 2.0 ** min(n - 1, MAX_DOUBLINGS)
