"""The Prometheus metrics of one process: what is counted and the registry /metrics shows.

Creating them changes nothing process-wide: serve's processes first call
`mailgate.process.share_metrics(directory)` (prometheus_client's multiprocess mode), then
`Metrics.create(directory)` exposes the sum over every process writing there.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from mailgate.models import Source

log = logging.getLogger("mailgate.metrics")
P = ParamSpec("P")


def never_raises(fn: Callable[P, None]) -> Callable[P, None]:
    """A metric update that raises (a new metric file on a full disk) is skipped, and
    said once a minute: it runs after a commit, where an exception would answer a
    stored message as failed (and its client would send it again), and on the store's
    own threads."""
    said = [float("-inf")]

    @functools.wraps(fn)
    def safe(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            if time.monotonic() - said[0] >= 60:
                said[0] = time.monotonic()
                log.warning("metrics: %s failed: %s (said once a minute)", fn.__name__, exc)

    return safe


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# the stages of a commit are shorter: a sync takes ~0.3 ms on a fast disk
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Metrics:
    registry: CollectorRegistry  # what /metrics exposes
    accepted: Counter
    rejected: Counter
    latency: Histogram
    queue_depth: Gauge
    # Where a message's commit spends its time (the benches print these beside each rate):
    commit_wait: Histogram  # the door's wait for its message to be committed and on disk
    group_seconds: Histogram  # one commit group inside the write turn
    group_writes: Histogram  # the writes of that group
    sync_seconds: Histogram  # the fdatasync that makes groups durable (SQLite)
    # labelled children, made once: labels() takes a lock and builds a key every call
    _accepted_by: dict[Source, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, shared_dir: Path | None = None) -> Metrics:
        """The metrics of this process; with `shared_dir` (where share_metrics made them
        live) the exposed registry reads every process's values from there."""
        r = CollectorRegistry()
        exposed = r
        if shared_dir is not None:
            exposed = CollectorRegistry()
            MultiProcessCollector(exposed, path=str(shared_dir))  # type: ignore[no-untyped-call]
        return cls(
            exposed,
            Counter("mailgate_accepted_messages", "Messages committed", ["source"], registry=r),
            Counter("mailgate_rejected_requests", "Requests refused", ["reason"], registry=r),
            Histogram(
                "mailgate_http_request_seconds",
                "HTTP request latency",
                ["route"],
                registry=r,
                buckets=LATENCY_BUCKETS,
            ),
            Gauge(
                "mailgate_queue_depth",
                "Recipients by status",
                ["status"],
                registry=r,
                multiprocess_mode="mostrecent",  # set from the store by whoever is scraped
            ),
            Histogram(
                "mailgate_accept_commit_seconds",
                "From a commit handed to the store (a message or an HTTP batch) to its being"
                " on disk, as the door waits",
                registry=r,
                buckets=STAGE_BUCKETS,
            ),
            Histogram(
                "mailgate_store_commit_seconds",
                "One commit group inside the write turn",
                registry=r,
                buckets=STAGE_BUCKETS,
            ),
            Histogram(
                "mailgate_store_commit_group_writes",
                "Writes folded into one commit group",
                registry=r,
                buckets=GROUP_BUCKETS,
            ),
            Histogram(
                "mailgate_store_sync_seconds",
                "One fdatasync of SQLite's WAL, covering every group committed before it",
                registry=r,
                buckets=STAGE_BUCKETS,
            ),
        )

    @never_raises
    def count_accepted(self, source: Source, n: int) -> None:
        """The door's count: messages committed, by the way they came in."""
        child = self._accepted_by.get(source)
        if child is None:
            child = self._accepted_by[source] = self.accepted.labels(source)
        child.inc(n)

    @never_raises
    def time_commit_wait(self, seconds: float) -> None:
        self.commit_wait.observe(seconds)

    @never_raises
    def time_group(self, seconds: float, writes: int) -> None:
        self.group_seconds.observe(seconds)
        self.group_writes.observe(writes)

    @never_raises
    def time_sync(self, seconds: float) -> None:
        self.sync_seconds.observe(seconds)
