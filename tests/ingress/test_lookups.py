"""The suppression lookups of one turn of the loop are one read; each caller gets its
own addresses' entries; a failed or cancelled read fails every caller of its turn."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from mailgate.errors import StoreUnavailable
from mailgate.ingress.lookups import Found, JoinedLookups

LIST = {"a@x.test": [("", "hard_bounce")], "c@x.test": [("y.test", "complaint")]}


class Reads:
    def __init__(self, fail: BaseException | None = None, hold: asyncio.Event | None = None):
        self.calls: list[list[str]] = []
        self.fail, self.hold = fail, hold

    async def __call__(self, addresses: Sequence[str]) -> Found:
        self.calls.append(list(addresses))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return {a: LIST[a] for a in addresses if a in LIST}


async def test_lookups_of_one_turn_are_one_read_and_each_gets_its_own() -> None:
    reads = Reads()
    joined = JoinedLookups(reads)
    got = await asyncio.gather(
        joined.among(["a@x.test", "b@x.test"]),
        joined.among(["b@x.test"]),
        joined.among(["c@x.test", "a@x.test"]),
    )
    assert reads.calls == [["a@x.test", "b@x.test", "c@x.test"]]
    assert list(got) == [
        {"a@x.test": LIST["a@x.test"]},
        {},
        {"c@x.test": LIST["c@x.test"], "a@x.test": LIST["a@x.test"]},
    ]


async def test_a_later_turn_reads_again() -> None:
    reads = Reads()
    joined = JoinedLookups(reads)
    assert await joined.among(["a@x.test"]) == {"a@x.test": LIST["a@x.test"]}
    LIST["b@x.test"] = [("", "manual")]  # listed since: nothing is remembered
    try:
        assert await joined.among(["b@x.test"]) == {"b@x.test": [("", "manual")]}
    finally:
        del LIST["b@x.test"]
    assert reads.calls == [["a@x.test"], ["b@x.test"]]


async def test_a_failed_read_fails_every_caller_of_its_turn_and_the_next_turn_reads() -> None:
    reads = Reads(fail=StoreUnavailable("store: disk"))
    joined = JoinedLookups(reads)
    got = await asyncio.gather(
        joined.among(["a@x.test"]), joined.among(["c@x.test"]), return_exceptions=True
    )
    assert [type(g) for g in got] == [StoreUnavailable, StoreUnavailable]
    reads.fail = None
    assert await joined.among(["c@x.test"]) == {"c@x.test": LIST["c@x.test"]}


async def two_joined_in_flight() -> tuple[asyncio.Event, asyncio.Task[Found], asyncio.Task[Found]]:
    """Two lookups joined into one read that is held until the event is set."""
    hold = asyncio.Event()
    reads = Reads(hold=hold)
    joined = JoinedLookups(reads)
    first = asyncio.create_task(joined.among(["a@x.test"]))
    second = asyncio.create_task(joined.among(["c@x.test"]))
    for _ in range(1000):  # a bound: the read starts within a turn or two
        if reads.calls:
            break
        await asyncio.sleep(0)
    assert reads.calls == [["a@x.test", "c@x.test"]], "the two were not joined into one read"
    return hold, first, second


async def test_the_first_callers_cancellation_does_not_strand_the_others() -> None:
    _, first, second = await two_joined_in_flight()
    first.cancel()  # its client went away while the read was in flight
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(second, 5)


async def test_a_joined_callers_cancellation_leaves_the_read_to_the_others() -> None:
    hold, first, second = await two_joined_in_flight()
    second.cancel()
    hold.set()
    assert await first == {"a@x.test": LIST["a@x.test"]}
    with pytest.raises(asyncio.CancelledError):
        await second
