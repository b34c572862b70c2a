"""models: ids and small rules."""

from __future__ import annotations

import random

from mailgate import models
from mailgate.models import ApiKey, Scope, domain_of, new_id


def reference_ulid(ms: int, rand: int) -> str:
    value, out = (ms << 80) | rand, []
    for _ in range(26):
        out.append(models._CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def test_new_id_matches_the_plain_ulid_encoding(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    for _ in range(2000):
        ms, rand = rng.getrandbits(48), rng.getrandbits(80)
        monkeypatch.setattr(models._rng, "getrandbits", lambda n, r=rand: r)
        assert new_id((ms + 0.5) / 1000) == reference_ulid(ms, rand)


def test_ids_sort_by_time_and_floor_is_smallest() -> None:
    a, b = new_id(1_700_000_000.000), new_id(1_700_000_000.002)
    assert len(a) == 26 and a < b
    assert new_id(1_700_000_000.001, floor=True) > a
    assert new_id(1_700_000_000.002, floor=True) <= b


def test_api_key_rules() -> None:
    k = ApiKey("id", "n", frozenset([Scope.SEND]), ("example.org",), 0.0, None)
    assert k.allows_sender("example.org") and not k.allows_sender("example.com")
    assert k.has(Scope.SEND) and not k.has(Scope.READ)
    admin = ApiKey("id", "n", frozenset([Scope.ADMIN]), (), 0.0, None)
    assert admin.has(Scope.READ) and admin.allows_sender("anything.test")
    assert domain_of("A@Example.ORG") == "example.org"


def test_forked_processes_make_different_ids() -> None:
    import os

    from mailgate.models import new_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes its next id and leaves at once
        os.write(write, new_id(1_700_000_000.0).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 26 and child != new_id(1_700_000_000.0)
