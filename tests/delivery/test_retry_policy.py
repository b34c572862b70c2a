"""The retry schedule, asserted literally."""

from __future__ import annotations

import random

from mailgate.delivery.retry_policy import (
    RetryPolicy,
    after_temporary_failure,
    base_delay,
    next_attempt,
)
from mailgate.models import RecipientStatus


def test_schedule_doubles_from_first_and_caps() -> None:
    policy = RetryPolicy(first=300, maximum=4000, jitter=0)
    assert [base_delay(n, policy) for n in range(1, 9)] == [
        300,
        600,
        1200,
        2400,
        4000,
        4000,
        4000,
        4000,
    ]


def test_jitter_spreads_within_bounds_and_differs() -> None:
    policy = RetryPolicy(first=300, maximum=4000, jitter=0.2)
    rng = random.Random(1)
    times = [next_attempt(1, 0.0, policy, rng) for _ in range(200)]
    assert min(times) >= 240 and max(times) <= 360
    assert len({round(t) for t in times}) > 50  # no stampede: retries spread out


def test_expires_once_past_the_lifetime() -> None:
    policy = RetryPolicy(first=60, maximum=600, jitter=0, lifetime=1000)
    assert after_temporary_failure(1, 0.0, 0.0, policy) == (RecipientStatus.DEFERRED, 60.0)
    assert after_temporary_failure(4, 0.0, 500.0, policy) == (RecipientStatus.DEFERRED, 980.0)
    assert after_temporary_failure(5, 0.0, 500.0, policy) == (RecipientStatus.EXPIRED, None)
