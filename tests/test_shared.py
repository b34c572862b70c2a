"""The shared tables behind the server-wide limits: two maps of one file see one state;
slots of names not seen for `ttl` are taken again; a dead process's counts drop out;
the table never fills up (the least recently used slot goes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate import shared
from mailgate.shared import ALIVE_FOR, SharedBuckets, SharedCounts, SharedEvents, SharedTable


def test_two_maps_of_one_file_share_buckets_and_events(tmp_path: Path) -> None:
    a, b = SharedBuckets(1.0, 3, tmp_path / "r.shm"), SharedBuckets(1.0, 3, tmp_path / "r.shm")
    now = 1_700_000_000.0
    assert [a.take("k", now), b.take("k", now), a.take("k", now)] == [0.0, 0.0, 0.0]
    assert b.take("k", now) > 0, "the burst of 3 is one for both"
    assert a.take("k", now + 1.0) == 0.0, "refilled at the rate"
    assert b.take("other", now) == 0.0
    e1, e2 = SharedEvents(4, 60.0, tmp_path / "e.shm"), SharedEvents(4, 60.0, tmp_path / "e.shm")
    assert [e1.add("ip", now), e2.add("ip", now + 1), e1.add("ip", now + 2)] == [1, 2, 3]
    assert e2.recent("ip", now + 61.5) == [now + 2], "older ones left the window"
    assert e1.add("ip", now + 200) == 1


def test_the_table_never_fills_and_stale_slots_are_reused() -> None:
    clock = [1000.0]
    table = SharedTable(8, slots=4, ttl=10.0, clock=lambda: clock[0])

    def put(name: str) -> None:
        table.update(name, lambda p: (name.encode().ljust(8)[:8], None))

    def get(name: str) -> bytes | None:
        return table.update(name, lambda p: (None, p))

    for name in ("a", "b", "c", "d", "e"):  # more names than slots
        put(name)
        clock[0] += 1
    assert get("e") == b"e       "
    assert sum(get(n) is not None for n in "abcd") == 3, "the least recently used went"
    clock[0] += 100
    assert get("e") is None, "not seen for ttl: gone"


def test_a_dead_processs_counts_drop_out(tmp_path: Path) -> None:
    path = tmp_path / "c.shm"
    child = (
        "import sys; from pathlib import Path; from mailgate.shared import SharedCounts;"
        f"c = SharedCounts(Path({str(path)!r}));"
        "assert c.acquire('ip', 5) and c.acquire('ip', 5); print(c.held('ip'))"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
    mine = SharedCounts(path)
    assert mine.held("ip") == 0, "the child exited: its two connections are gone"
    assert all(mine.acquire("ip", 2) for _ in range(2)) and not mine.acquire("ip", 2)
    mine.release("ip")
    assert mine.held("ip") == 1 and os.getpid() == mine.pid


def test_a_full_table_never_takes_or_wipes_a_live_count() -> None:
    """Two slots, three addresses: the third is let in uncounted; closing it frees
    nobody else's count; a count that reaches zero frees its slot."""
    counts = SharedCounts(slots=2)
    assert all(counts.acquire("a", 3) for _ in range(3)) and not counts.acquire("a", 3)
    assert counts.acquire("b", 3)
    assert counts.acquire("c", 3), "no free slot: let in, not counted"
    assert counts.held("c") == 0
    counts.release("c")
    assert (counts.held("a"), counts.held("b")) == (3, 1), "nobody's count was touched"
    assert not counts.acquire("a", 3), "a is still at its cap"
    counts.release("b")
    assert counts.held("b") == 0
    assert counts.acquire("c", 3) and counts.held("c") == 1, "b's freed slot is taken"


def test_what_other_nodes_did_counts_here() -> None:
    """The three ways cluster_limits.py applies another node's use, and the journal of
    this process's own use it tells them."""
    buckets = SharedBuckets(rate=1.0, burst=4.0)
    assert buckets.take("key", 100.0) == 0.0
    assert buckets.taken == {"key": (1, 100.0)}
    buckets.debit("key", 10, 100.0)  # below empty, down to DEBT_SECONDS of the rate
    assert buckets.take("key", 100.0) == 6.0  # 5 owed and the one token asked for
    assert buckets.taken == {"key": (1, 100.0)}  # a refusal takes nothing

    events = SharedEvents(keep=4, window=60.0)
    events.add("1.2.3.4", 100.0, count=3, at=95.0)  # another node's, earlier
    assert events.recent("1.2.3.4", 100.0) == [95.0, 95.0, 95.0]
    assert events.added == {}  # not this process's own: not told again
    assert events.add("1.2.3.4", 101.0) == 4
    assert events.added == {"1.2.3.4": (1, 101.0)}
    events.add("5.6.7.8", 200.0, count=2, at=100.0)  # out of the window: nothing kept
    assert events.recent("5.6.7.8", 200.0) == []

    counts = SharedCounts()
    assert counts.acquire("ip", 3)
    counts.set_other_nodes("ip", 2)
    assert counts.held("ip") == 3
    assert not counts.acquire("ip", 3)
    assert counts.mine == {"ip": 1} and counts.changed == {"ip"}
    counts.set_other_nodes("ip", 0)
    counts.release("ip")
    assert counts.held("ip") == 0 and counts.mine == {}


def test_a_process_seen_running_is_asked_about_again_after_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Liveness from /proc is kept for ALIVE_FOR (each connection's open and close asks
    about every other process): a process that dies counts for at most that long."""
    path = tmp_path / "c.shm"
    code = (
        "import sys; from pathlib import Path; from mailgate.shared import SharedCounts;"
        f"c = SharedCounts(Path({str(path)!r}));"
        "assert c.acquire('ip', 5) and c.acquire('ip', 5); print('held', flush=True);"
        "sys.stdin.read()"
    )
    now = [1000.0]
    monkeypatch.setattr(shared.time, "monotonic", lambda: now[0])
    mine = SharedCounts(path)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        assert mine.held("ip") == 2, "the child runs: its two connections count"
        child.kill()
    now[0] += ALIVE_FOR / 2
    assert mine.held("ip") == 2, "seen running half a window ago: not asked again yet"
    now[0] += ALIVE_FOR
    assert mine.held("ip") == 0, "asked again: gone, and its counts with it"
    assert mine.acquire("ip", 1)
