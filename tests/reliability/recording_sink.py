"""A receiving SMTP server that records what it was given, for the chaos and crash tests.

Runs as its own process so it outlives the mailgate it receives from:

    python -m tests.reliability.recording_sink PORT LOG [--hold-first MARKER]
        [--reply-first CODE] [--fail-first N]

Every message's `X-Chaos-Seq` header value is appended to LOG (one line per recipient,
flushed) *before* the reply is sent, as a real server would have the data by then.
`--hold-first MARKER` writes MARKER once the first message's data is in and then holds
its reply for a minute: a sender killed in that window had the data delivered without
knowing it. `--reply-first CODE --fail-first N` answers the first N messages with CODE
(a 421 storm, say) and records nothing for them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

SEQ = re.compile(rb"^X-Chaos-Seq: *(\S+)", re.MULTILINE | re.IGNORECASE)


class Recorder:
    def __init__(self, log: Path, hold_marker: Path | None, code: int, fail_first: int) -> None:
        self.out = log.open("a", buffering=1)
        self.hold_marker = hold_marker
        self.code, self.fail_left = code, fail_first

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_left > 0:
            self.fail_left -= 1
            return f"{self.code} 4.3.2 Try again later"
        found = SEQ.search(envelope.content)
        seq = found.group(1).decode() if found else "none"
        for _ in envelope.rcpt_tos:
            self.out.write(seq + "\n")
        if self.hold_marker is not None:
            marker, self.hold_marker = self.hold_marker, None
            marker.write_text(seq)
            await asyncio.sleep(60)
        return "250 2.0.0 Ok"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("log", type=Path)
    parser.add_argument("--hold-first", type=Path)
    parser.add_argument("--reply-first", type=int, default=421)
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args()
    handler = Recorder(args.log, args.hold_first, args.reply_first, args.fail_first)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test", data_size_limit=None),
        "127.0.0.1",
        args.port,
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
