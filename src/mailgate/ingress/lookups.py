"""The suppression lookups of one turn of the event loop, made as one read.

Under load many sends reach the door together (a process took 25 HTTP connections in
the benches), and each asked the store about its own recipients: on SQLite a point read
costs far more in its call (the statement, the cursor, the result list) than in its
rows, about 6% of an ingress process's CPU at 2,000 sends a second. The first lookup of
a turn lets the others of that turn join it (one `sleep(0)`), then reads for them all;
each gets back its own addresses' entries. Nothing is cached between turns: a lookup
sees every entry committed before it began, as a read of its own would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from mailgate.errors import StoreUnavailable

Found = dict[str, list[tuple[str, str]]]  # address -> [(scope, reason)]
Read = Callable[[Sequence[str]], Awaitable[Found]]


class _Turn:
    __slots__ = ("addresses", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.addresses: dict[str, None] = {}  # ordered, no repeats
        self.future: asyncio.Future[Found] = loop.create_future()


class JoinedLookups:
    def __init__(self, read: Read) -> None:
        self.read = read
        self._turn: _Turn | None = None

    async def among(self, addresses: Sequence[str]) -> Found:
        """The entries of these (normalised) addresses, read with the lookups of the
        same turn."""
        turn = self._turn
        if turn is not None:  # one is gathering: join it
            turn.addresses.update(dict.fromkeys(addresses))
            return _mine(await asyncio.shield(turn.future), addresses)
        turn = self._turn = _Turn(asyncio.get_running_loop())
        turn.addresses.update(dict.fromkeys(addresses))
        try:
            await asyncio.sleep(0)  # the others of this turn join
            self._turn = None
            found = await self.read(list(turn.addresses))
        except BaseException as exc:
            if self._turn is turn:
                self._turn = None
            if not turn.future.done():  # the joined are not left waiting
                turn.future.set_exception(
                    exc
                    if isinstance(exc, Exception)
                    else StoreUnavailable("store: the lookup was cancelled")
                )
                turn.future.exception()  # retrieved: no "never retrieved" warning
            raise
        turn.future.set_result(found)
        return _mine(found, addresses)


def _mine(found: Found, addresses: Sequence[str]) -> Found:
    return {a: found[a] for a in addresses if a in found}
