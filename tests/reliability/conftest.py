"""Print the crash-case table at the end of every test run, as bench/chaos.py does."""

from __future__ import annotations

from typing import Any

from tests.reliability.harness import CaseResult, table

RESULTS: list[CaseResult] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.section("reliability: crash and fault cases under load")
        terminalreporter.write_line(table(RESULTS))
