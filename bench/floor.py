"""What bounds SMTP ingest on this machine, below mailgate's store (issue 13).

Beside the smtp-source -> smtp-sink ceiling, 2 KB mail at 20 sessions (smtp-source -d)
and with a connection per message (without -d) into:

- `python sink`: bench/python_sink.py, a do-nothing SMTP server on uvloop (one process,
  and two sharing the port): what Python's event loop costs a message;
- `mailgate, no store`: `mailgate serve` as shipped, except that its door answers 250
  without committing (a `sitecustomize` on PYTHONPATH replaces `Door.commit` in every
  process, in this bench only; mailgate has no such setting): the protocol, the checks,
  the message's rows, everything but the commit;
- `mailgate`: as shipped (SQLite, synchronous commits).

Each rate is printed with the machine's CPU per message, idle share and the ratio to the
ceiling sent the same way. The gap between the no-store line and the ceiling is what no
store, however fast, could close.

    python bench/floor.py [--messages 20000] [--per-connection 10000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smtp_ingest
from machine import header
from smtp_load import free_port, wait_port

HERE = Path(__file__).resolve().parent
# Replaces the commit in every mailgate process this bench starts (children included:
# they inherit PYTHONPATH). Counted as an accepted message, so the door's metrics match.
NO_STORE = """\
from mailgate.ingress import accept

async def _commit(self, messages, idempotency=None, response=None):
    self.count(messages[0].source, len(messages))
    return accept.Accepted(messages[0].id, replayed=False)

accept.Door.commit = _commit
"""


@contextmanager
def python_sink(processes: int) -> Iterator[int]:
    port = free_port()
    args = [sys.executable, str(HERE / "python_sink.py"), str(port)]
    proc = subprocess.Popen([*args, "--processes", str(processes)])
    try:
        wait_port(port)
        yield port
    finally:
        smtp_ingest.stop(proc)


@contextmanager
def mailgate(tmp: Path, no_store: bool) -> Iterator[int]:
    saved = os.environ.get("PYTHONPATH")
    if no_store:
        patch = tmp / "no-store"
        patch.mkdir(exist_ok=True)
        (patch / "sitecustomize.py").write_text(NO_STORE)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(patch), saved]))
    try:
        proc = smtp_ingest.start_mailgate(tmp, deliver=False)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield smtp_ingest.MAILGATE_PORT
    finally:
        smtp_ingest.stop(proc)
        shutil.rmtree(tmp / "mailgate", ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--per-connection", type=int, default=10_000)
    p.add_argument("--sessions", type=int, default=20)
    args = p.parse_args()
    machine = header(args.sessions, args.messages, args.per_connection)
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-floor-"))
    try:
        for reuse, count, ceiling in (
            (True, args.messages, machine.ceiling),
            (False, args.per_connection, machine.ceiling_per_connection),
        ):
            if not count or not ceiling:
                continue
            how = f"{args.sessions} sessions" if reuse else "a connection per message"
            print(f"2 KB, {how} (ceiling {ceiling:,.0f} msg/s):", flush=True)
            for processes in (1, 2):
                with python_sink(processes) as port:
                    rate = smtp_ingest.smtp_source(port, count, args.sessions, 2048, None, reuse)
                name = f"python sink, {processes} process(es)"
                print(f"   {name:32s} {rate.describe(ceiling)}", flush=True)
            for name, no_store in (("mailgate, no store", True), ("mailgate", False)):
                with mailgate(tmp, no_store) as port:
                    rate = smtp_ingest.smtp_source(port, count, args.sessions, 2048, None, reuse)
                print(f"   {name:32s} {rate.describe(ceiling)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "CPU/msg is the machine's busy time less smtp-source's and this script's; "
        "ratios are to the ceiling sent the same way (target for mailgate: >= 0.5x)"
    )


if __name__ == "__main__":
    main()
