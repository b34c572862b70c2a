"""The overview, the dashboard's landing page: accepted, delivered, deferred and bounced
over the last hour (5-minute bars), day (hourly bars) and week (daily bars), drawn on the
server as inline SVG (no script: the policy allows none inline, and none is needed); the
delivery rate of each; the queue's depth; the routes with most recipients waiting and
their latest deferral reply.

It reads through indexes only, so it costs the same with a million messages stored: the
bounds of each time bucket are event ids found by a search of the events' primary key
(Store.event_ids_at), and a bucket's counts are a range of that key. A finished hour
never changes, so its counts are kept in this process once read: a request counts the
current hour and the last hour's 5-minute buckets, and the first one of a process (or
after a week away) the rest of the week."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from mailgate.models import Reply
from mailgate.store import Store
from mailgate.ui.gate import Gate, Visitor

KINDS = ("accepted", "delivered", "deferred", "bounced")
HOUR, DAY = 3600, 86400
ROUTES_SHOWN = 10
SETTLE = 120  # seconds after an hour ends before its counts are kept for good
CHART_W, CHART_H, PAD_LEFT, PAD_BOTTOM = 720, 180, 44, 22


@dataclass(frozen=True, slots=True)
class Bar:
    kind: str
    n: int
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True, slots=True)
class Bucket:
    label: str  # the x axis label (may be "")
    title: str  # the bucket's span, for each bar's tooltip
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Chart:
    """One period: its totals, delivery rate and the SVG's geometry."""

    name: str
    slug: str
    totals: dict[str, int]
    rate: str
    bars: list[tuple[Bucket, list[Bar]]]
    ticks: list[tuple[float, int]]  # (y, value) of the grid lines
    labels: list[tuple[float, str]]  # (x, text) under the axis
    width: int = CHART_W
    height: int = CHART_H
    left: int = PAD_LEFT
    base: int = CHART_H - PAD_BOTTOM


def rate(totals: dict[str, int]) -> str:
    """Delivered as a share of the recipients that finished (delivered or bounced)."""
    done = totals["delivered"] + totals["bounced"]
    return f"{100 * totals['delivered'] / done:.1f} %" if done else "–"


def nice_top(n: int) -> int:
    """A round ceiling for the y axis."""
    top = 1
    while top < n:
        for step in (2, 5, 10):
            if top * step >= n or step == 10:
                candidate = top * step
                if candidate >= n:
                    return candidate
        top *= 10
    return top


def chart(name: str, slug: str, buckets: list[Bucket]) -> Chart:
    totals = {k: sum(b.counts.get(k, 0) for b in buckets) for k in KINDS}
    top = nice_top(max([b.counts.get(k, 0) for b in buckets for k in KINDS] + [1]))
    plot_h = CHART_H - PAD_BOTTOM - 8
    slot = (CHART_W - PAD_LEFT - 4) / len(buckets)
    bar_w = max(slot * 0.8 / len(KINDS), 1.0)
    bars, labels = [], []
    for i, b in enumerate(buckets):
        x0 = PAD_LEFT + i * slot + slot * 0.1
        row = []
        for j, kind in enumerate(KINDS):
            n = b.counts.get(kind, 0)
            h = plot_h * n / top
            row.append(Bar(kind, n, round(x0 + j * bar_w, 2), round(8 + plot_h - h, 2),
                           round(bar_w, 2), round(h, 2)))  # fmt: skip
        bars.append((b, row))
        if b.label:
            labels.append((round(PAD_LEFT + (i + 0.5) * slot, 2), b.label))
    ticks = [(round(8 + plot_h - plot_h * f, 2), round(top * f)) for f in (0, 0.5, 1)]
    return Chart(name, slug, totals, rate(totals), bars, ticks, labels)


def clock(t: float, fmt: str) -> str:
    return time.strftime(fmt, time.gmtime(t))


class OverviewPage:
    def __init__(self, gate: Gate, store: Store) -> None:
        self.gate, self.store = gate, store
        self.hours: dict[int, dict[str, int]] = {}  # finished hours' counts, by start

    async def hourly(self, starts: list[int], now: float) -> list[dict[str, int]]:
        """The counts of the hours starting at `starts` (ascending; the last may be the
        current hour): finished hours from memory once read, the others counted."""
        todo = [s for s in starts if s not in self.hours]
        counted: dict[int, dict[str, int]] = {}
        if todo:
            bounds = await self.store.event_ids_at([t for s in todo for t in (s, s + HOUR)])
            ranges = [(bounds[2 * i], bounds[2 * i + 1]) for i in range(len(todo))]
            counted = dict(zip(todo, await self.store.event_counts(ranges), strict=True))
            for start, counts in counted.items():
                if start + HOUR + SETTLE <= now:  # finished: it never changes again
                    self.hours[start] = counts
        for old in [s for s in self.hours if s < starts[0]]:
            del self.hours[old]  # older than the week shown
        return [self.hours.get(s) or counted.get(s, {}) for s in starts]

    async def show(self, request: Request, visitor: Visitor) -> Response:
        now = time.time()
        hour = int(now // HOUR) * HOUR
        today = int(now // DAY) * DAY
        week_start = today - 6 * DAY
        starts = list(range(week_start, hour + 1, HOUR))
        by_hour = dict(zip(starts, await self.hourly(starts, now), strict=True))

        five = int(now // 300) * 300
        edges = [five - 300 * i for i in range(11, -1, -1)]
        bounds = await self.store.event_ids_at([*edges, five + 300])
        minutes = await self.store.event_counts(list(itertools.pairwise(bounds)))
        last_hour = [
            Bucket(clock(e, "%H:%M") if i % 3 == 0 else "", clock(e, "%H:%M"), c)
            for i, (e, c) in enumerate(zip(edges, minutes, strict=True))
        ]
        day = [
            Bucket(
                clock(h, "%H") if i % 3 == 0 else "",
                clock(h, "%d %b %H:00"),
                by_hour[h],
            )
            for i, h in enumerate(range(hour - 23 * HOUR, hour + 1, HOUR))
        ]
        week = []
        for d in range(week_start, today + 1, DAY):
            counts = {
                k: sum(by_hour[h].get(k, 0) for h in range(d, d + DAY, HOUR) if h in by_hour)
                for k in KINDS
            }
            week.append(Bucket(clock(d, "%a %d"), clock(d, "%a %d %b"), counts))

        routes = await self.store.waiting_routes(ROUTES_SHOWN)
        deferrals = await self.store.latest_deferrals([name for name, _ in routes])
        reasons = {
            name: (Reply(code, enhanced, text), at)
            for name, (code, enhanced, text, at) in deferrals.items()
        }
        return self.gate.pages.render(
            "overview.html",
            visitor=visitor,
            nav="overview",
            charts=[
                chart("Last hour", "hour", last_hour),
                chart("Last 24 hours", "day", day),
                chart("Last 7 days", "week", week),
            ],
            kinds=KINDS,
            depth=await self.store.waiting_count(),
            routes=routes,
            reasons=reasons,
            now=now,
        )
