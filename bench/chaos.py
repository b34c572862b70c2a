"""Chaos runs: SIGKILL under SMTP + HTTP load (20 runs by default), SIGTERM under load,
and receiver faults, each against a real `mailgate serve` relaying to a recording sink.

Prints one row per case (acknowledged, delivered, lost, duplicated, duplicates not
explained by a kill in flight, recipients left queued) and a total. Exit status 1 when
any case fails. The same cases run, fewer of them, in tests/reliability.

    python bench/chaos.py [--runs 20] [--shutdowns 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reliability.harness import (
    CaseResult,
    crash_case,
    destination_case,
    shutdown_case,
    table,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="SIGKILL runs")
    parser.add_argument("--shutdowns", type=int, default=3, help="SIGTERM runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="mailgate-chaos-") as tmp:
        root = Path(tmp)
        for i in range(args.runs):
            results.append(crash_case(root / f"crash{i}", args.seed + i))
            print(table(results[-1:]).split("\n")[1], flush=True)
        for i in range(args.shutdowns):
            result, _ = shutdown_case(root / f"term{i}", args.seed + i)
            results.append(result)
            print(table(results[-1:]).split("\n")[1], flush=True)
        for kind in ("down", "storm"):
            results.append(destination_case(root / kind, kind))
            print(table(results[-1:]).split("\n")[1], flush=True)
    print()
    print(table(results))
    lost = sum(len(r.lost) for r in results)
    print(f"acknowledged messages lost across all runs: {lost}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
