"""Child process for the crash tests: enqueue (or claim) in a loop until killed.

Prints each acknowledged message id on stdout, flushed, right after enqueue returns,
so the parent knows exactly what was acknowledged before the SIGKILL.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

from mailgate.models import NewMessage, Source
from mailgate.store import open_store


def body_for(message_id: str) -> bytes:
    """2 KB, or 77 KB for one in four, so that commit groups put bodies in body files."""
    digest = hashlib.sha256(message_id.encode()).hexdigest()
    repeat = 1200 if int(digest[:2], 16) % 4 == 0 else 30
    return (f"Subject: {message_id}\r\n\r\n" + digest * repeat + "\r\n").encode()


def recipients_for(message_id: str) -> tuple[str, ...]:
    n = 1 + int(hashlib.sha256(message_id.encode()).hexdigest()[:2], 16) % 4
    return tuple(f"r{i}@d{i}.test" for i in range(n))


async def enqueue_forever(url: str, producers: int) -> None:
    store = open_store(url)
    await store.open()
    print("ready", flush=True)

    async def producer() -> None:
        while True:
            m = NewMessage(raw=b"", sender="s@example.org", recipients=(), source=Source.SMTP)
            m = NewMessage(
                raw=body_for(m.id),
                sender="s@example.org",
                recipients=recipients_for(m.id),
                source=Source.SMTP,
                id=m.id,
            )
            await store.enqueue(m)
            sys.stdout.write(m.id + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(producer() for _ in range(producers)))


async def claim_and_hang(url: str, lease: float) -> None:
    import time

    store = open_store(url)
    await store.open()
    claim = await store.claim("doomed-worker", time.time(), 100, lease)
    ids = [r.id for r in claim.recipients] if claim else []
    print(" ".join(map(str, ids)), flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    mode, url, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "enqueue":
        asyncio.run(enqueue_forever(url, int(arg)))
    else:
        asyncio.run(claim_and_hang(url, float(arg)))
