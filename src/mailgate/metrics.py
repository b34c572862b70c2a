"""The Prometheus metrics of one process: what is counted and the registry /metrics shows.

Creating them changes nothing process-wide: serve's processes first call
`mailgate.process.share_metrics(directory)` (prometheus_client's multiprocess mode), then
`Metrics.create(directory)` exposes the sum over every process writing there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from mailgate.models import Source

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass
class Metrics:
    registry: CollectorRegistry  # what /metrics exposes
    accepted: Counter
    rejected: Counter
    latency: Histogram
    queue_depth: Gauge
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
        )

    def count_accepted(self, source: Source, n: int) -> None:
        """The door's count: messages committed, by the way they came in."""
        child = self._accepted_by.get(source)
        if child is None:
            child = self._accepted_by[source] = self.accepted.labels(source)
        child.inc(n)
