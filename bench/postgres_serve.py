"""The serve path on PostgreSQL next to SQLite (issue 17): HTTP single sends (wrk, 50
connections, 2 KB, delivery off: what a 202 costs) on one node on SQLite, one node on
PostgreSQL (target >= 0.8x SQLite), and two nodes on one PostgreSQL at once (separate
data directories and ports, 25 connections each: their combined rate). Every node runs
on this one 2-core machine, so two nodes share the same CPUs as one: the combined rate
shows what the database side allows, not what two machines would. PostgreSQL is the
local server (127.0.0.1:5432, database test), in a schema made for the run and dropped.

    python bench/postgres_serve.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_ingest import HTTP_PORT, ONE, ensure_wrk, run_wrk, start_mailgate
from machine import header
from smtp_ingest import stop

PG = "postgresql://postgres@127.0.0.1:5432/test"
SECOND_PORT = HTTP_PORT + 1


async def schema(action: str, name: str) -> None:
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(f"{action} SCHEMA {name}" + (" CASCADE" if action == "DROP" else ""))
    finally:
        await conn.close()


def one_node(seconds: int, extra: dict[str, str]) -> tuple[float, float, str]:
    """(messages/s, p99 ms, CPU description) of one node."""
    tmp = Path(tempfile.mkdtemp(prefix="mailgate-pgbench-"))
    proc, key = start_mailgate(tmp, extra)
    try:
        _, rate, _, p99, errors, cpu = run_wrk(
            tmp, key, "/v1/messages", json.dumps(ONE), seconds, 50, 1
        )
        assert errors == 0, errors
        return rate, p99, cpu.describe()  # run_wrk gives p99 in ms
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def two_nodes(seconds: int, url: str) -> tuple[float, float]:
    """Each node's messages/s, loaded at the same time."""
    tmps = [Path(tempfile.mkdtemp(prefix="mailgate-pgbench-")) for _ in range(2)]
    ports = (HTTP_PORT, SECOND_PORT)
    nodes = [
        start_mailgate(tmp, {"MAILGATE_STORE_URL": url}, port=port)
        for tmp, port in zip(tmps, ports, strict=True)
    ]
    rates = [0.0, 0.0]
    try:

        def load(i: int) -> None:
            _, rates[i], _, _, _, _ = run_wrk(
                tmps[i], nodes[i][1], "/v1/messages", json.dumps(ONE), seconds, 25, 1, ports[i]
            )

        threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return rates[0], rates[1]
    finally:
        for proc, _ in nodes:
            stop(proc)
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=15)
    args = p.parse_args()
    ensure_wrk()
    header(20, 20_000)
    sqlite, sqlite_p99, sqlite_cpu = one_node(args.seconds, {})
    print(f"sqlite, one node    : {sqlite:8,.0f} msg/s  p99 {sqlite_p99:5.1f} ms  {sqlite_cpu}")
    name = "mg_bench_" + uuid.uuid4().hex[:8]
    url = f"{PG}?search_path={name}"
    asyncio.run(schema("CREATE", name))
    try:
        pg, pg_p99, pg_cpu = one_node(args.seconds, {"MAILGATE_STORE_URL": url})
        print(f"postgres, one node  : {pg:8,.0f} msg/s  p99 {pg_p99:5.1f} ms  {pg_cpu}")
    finally:
        asyncio.run(schema("DROP", name))
    name = "mg_bench_" + uuid.uuid4().hex[:8]
    url = f"{PG}?search_path={name}"
    asyncio.run(schema("CREATE", name))
    try:
        a, b = two_nodes(args.seconds, f"{PG}?search_path={name}")
        print(f"postgres, two nodes : {a + b:8,.0f} msg/s combined ({a:,.0f} + {b:,.0f})")
    finally:
        asyncio.run(schema("DROP", name))
    print(
        f"ratio : postgres one node {pg / sqlite:.2f}x sqlite (target >= 0.8x); "
        f"two nodes {(a + b) / pg:.2f}x one node (same 2 cores)"
    )


if __name__ == "__main__":
    main()
