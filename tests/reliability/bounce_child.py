"""Child process for the bounce crash test: enqueue, claim and bounce with a DSN, in
several loops at once, until killed."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from mailgate.models import NewMessage, RecipientStatus, Reply, Settlement, Source
from mailgate.store import Dsn, open_store


async def bounce_forever(url: str, loops: int) -> None:
    store = open_store(url)
    await store.open()
    print("ready", flush=True)

    async def loop(n: int) -> None:
        owner = f"bouncer-{n}"
        while True:
            sender = f"s-{uuid.uuid4().hex}@example.org"
            m = NewMessage(
                raw=b"Subject: hi\r\n\r\nbody\r\n",
                sender=sender,
                recipients=(f"gone@n{n}.test",),
                source=Source.SMTP,
            )
            await store.enqueue(m)
            claim = await store.claim(owner, time.time(), 10, 300)
            if claim is None:
                continue
            settlements, dsns = [], []
            for r in claim.recipients:
                settlements.append(
                    Settlement(r.id, RecipientStatus.BOUNCED, Reply(550, "5.1.1", "gone"))
                )
                if r.domain.startswith("n"):  # the DSNs themselves are not bounced again
                    notice = NewMessage(
                        raw=b"Subject: Undelivered Mail\r\n\r\nsorry\r\n",
                        sender="",
                        recipients=(f"dsn-{r.message_id}@example.org",),
                        source=Source.DSN,
                    )
                    dsns.append(Dsn(notice, (r.id,)))
            await store.settle(owner, settlements, dsns)

    await asyncio.gather(*(loop(n) for n in range(loops)))


if __name__ == "__main__":
    asyncio.run(bounce_forever(sys.argv[1], int(sys.argv[2])))
