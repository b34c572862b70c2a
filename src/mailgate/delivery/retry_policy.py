"""When to try again, as pure functions (tested literally in tests/delivery)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mailgate.models import RecipientStatus


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first: float = 300.0  # seconds before the first retry
    maximum: float = 4000.0  # no delay grows past this
    jitter: float = 0.2  # each delay is spread by up to this share, up or down
    lifetime: float = 432_000.0  # deferred past created_at + lifetime -> expired


def base_delay(attempts: int, policy: RetryPolicy) -> float:
    """The delay after the n-th failed attempt (n >= 1), before jitter: first * 2^(n-1), capped."""
    return float(min(policy.first * 2.0 ** max(0, attempts - 1), policy.maximum))


def next_attempt(
    attempts: int, now: float, policy: RetryPolicy, rng: random.Random | None = None
) -> float:
    """When to retry after the n-th failed attempt; jitter keeps retries from stampeding."""
    delay = base_delay(attempts, policy)
    if policy.jitter:
        spread = (rng or random).uniform(-policy.jitter, policy.jitter)
        delay *= 1 + spread
    return now + delay


def after_temporary_failure(
    attempts: int,
    created_at: float,
    now: float,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> tuple[RecipientStatus, float | None]:
    """DEFERRED with the next attempt time, or EXPIRED once past the queue lifetime."""
    at = next_attempt(attempts, now, policy, rng)
    if at >= created_at + policy.lifetime:
        return RecipientStatus.EXPIRED, None
    return RecipientStatus.DEFERRED, at
