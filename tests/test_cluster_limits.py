"""What one node tells (Journal) and how another applies it (Seen), without a database:
the rows the journal makes are the rows the other node reads (cluster_limits.py). The
whole path through PostgreSQL and real servers is in tests/reliability/test_shared_limits.py."""

from __future__ import annotations

from typing import Any

from mailgate.cluster_limits import FRESH, Journal, Seen, Tables
from mailgate.shared import SharedBuckets, SharedCounts, SharedEvents


def node() -> Tables:
    return Tables(
        buckets={"rate": SharedBuckets(rate=1.0, burst=10.0)},
        events={"ip": SharedEvents(keep=10, window=600.0)},
        counts={"conn": SharedCounts()},
    )


def told(journal: Journal, tables: Tables, now: float, proc: str = "p1") -> list[tuple[Any, ...]]:
    """The journal's rows as the other node reads them (database clock = now)."""
    return [("a", proc, *row, now) for row in journal.changes(tables, now)]


def test_the_other_nodes_use_counts_here_once() -> None:
    a, b = node(), node()
    journal, seen = Journal(), Seen()
    for _ in range(3):
        assert a.buckets["rate"].take("key", 100.0) == 0.0
    a.events["ip"].add("1.2.3.4", 100.0)
    assert a.counts["conn"].acquire("1.2.3.4", 5)

    # b's first read: takes before it are history (not debited); failures and open
    # connections are what holds now
    seen.apply(told(journal, a, 100.0), 100.0, b, 100.0)
    assert b.buckets["rate"].take("key", 100.0) == 0.0
    assert b.buckets["rate"].taken == {"key": (1, 100.0)}
    assert b.events["ip"].recent("1.2.3.4", 100.0) == [100.0]
    assert b.counts["conn"].held("1.2.3.4") == 1

    # later takes on a are debited on b, once: a row read again changes nothing
    for _ in range(5):
        a.buckets["rate"].take("key", 101.0)
    rows = told(journal, a, 101.0)
    seen.apply(rows, 101.0, b, 101.0)
    seen.apply(rows, 101.5, b, 101.0)
    left = 10 - 1 - 5 + 1  # b's own take, a's five, one second's refill
    assert b.buckets["rate"].take("key", 101.0) == 0.0
    for _ in range(left - 1):
        assert b.buckets["rate"].take("key", 101.0) == 0.0
    assert b.buckets["rate"].take("key", 101.0) > 0, "no more than the burst in all"

    # nothing changed on a: nothing told
    assert journal.changes(a, 101.2) == []

    # a's connection closed: b counts it no more
    a.counts["conn"].release("1.2.3.4")
    seen.apply(told(journal, a, 102.0), 102.0, b, 102.0)
    assert b.counts["conn"].held("1.2.3.4") == 0


def test_a_restarted_process_and_a_dead_node() -> None:
    a, b = node(), node()
    journal, seen = Journal(), Seen()
    seen.apply([], 100.0, b, 100.0)  # b has read once: what comes next is new
    a.buckets["rate"].take("key", 100.0)
    a.counts["conn"].acquire("ip", 5)
    seen.apply(told(journal, a, 100.0), 100.0, b, 100.0)
    assert b.buckets["rate"].take("key", 100.0) == 0.0  # 10 - 1 - 1 left
    # the process on a starts again (a new name): its one take is debited
    again, fresh = node(), Journal()
    again.buckets["rate"].take("key", 100.0)
    seen.apply(told(fresh, again, 100.0, proc="p2"), 100.0, b, 100.0)
    taken = sum(b.buckets["rate"].take("key", 100.0) == 0.0 for _ in range(10))
    assert taken == 7  # 10 - b's 1 - a's 1 - the restarted process's 1
    # node a dies holding a connection: after FRESH seconds unheard, b stops counting it
    assert b.counts["conn"].held("ip") == 1
    seen.apply([], 100.0 + FRESH + 1, b, 100.0 + FRESH + 1)
    assert b.counts["conn"].held("ip") == 0


def test_a_count_that_started_again_is_counted() -> None:
    """A failure count on a starts again after its window; b, which read the old count,
    takes the new one's step, even when the totals happen to be equal."""
    a, b = node(), node()
    journal, seen = Journal(), Seen()
    seen.apply([], 100.0, b, 100.0)
    a.events["ip"].add("5.6.7.8", 100.0)
    seen.apply(told(journal, a, 100.0), 100.0, b, 100.0)
    journal.changes(a, 800.0)  # past the window: a forgets its count
    a.events["ip"].add("5.6.7.8", 801.0)
    seen.apply(told(journal, a, 801.0), 801.0, b, 801.0)
    assert b.events["ip"].recent("5.6.7.8", 801.0) == [801.0]
