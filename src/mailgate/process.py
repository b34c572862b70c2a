"""Settings that belong to the whole process, made once by `serve` (and by benches
that measure what serve runs), never as a side effect of opening a component."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

from prometheus_client import values as prometheus_values

# The SQLite writer thread must get the GIL back promptly after each fsync; with the
# default 5 ms switch interval it waited out the event loop's whole burst of work, so
# commits and the loop never overlapped (measured: 14k -> 16-20k enqueues/s).
SWITCH_INTERVAL = 0.0005


def tune_interpreter() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_heap() -> None:
    """Take everything alive once serve has started (modules, the app, its config and
    routes: tens of thousands of objects that live as long as the process) out of the
    cyclic collector's reach. Otherwise every full collection walks them all again,
    about 30 ms here, and each such pause lands on the requests in flight (their p99).
    Objects made later are collected as before."""
    gc.collect()
    gc.freeze()


def share_metrics(directory: Path) -> None:
    """Make this process's metric values live in `directory` (prometheus_client's
    multiprocess mode), so /metrics, whichever of serve's processes answers, shows the
    sum over all of them. Must run before any metric is created."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=current_pid
    )


_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def current_pid() -> int:
    """This process's id, kept from start and from each fork: prometheus_client asks on
    every metric update, only to notice a fork, and os.getpid() is a system call each
    time (2.7% of the samples of serving HTTP sends)."""
    return _pid[0]
