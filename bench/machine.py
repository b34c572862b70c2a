"""How fast the machine is and how much of it a run used, for every bench.

- `python_loop_seconds`: a 10,000,000-iteration Python loop (how fast this CPU runs Python);
- `smtp_ceiling`: smtp-source -> smtp-sink on loopback with no queue between (the most
  any SMTP relay here could do);
- `CpuMeter`: /proc/stat around a run -> busy CPU seconds of the whole machine, its idle
  share, and CPU per message without the load generator's own; and each of mailgate's
  processes by role (serve, ingress, writer, worker), so a figure that moved shows where;
  and, given mailgate's /metrics, where a commit's time went (`Stages`);
- `header`: the first line of every bench, so runs on machines of different speed can be
  compared (ratios to the ceiling travel; msg/s do not).
"""

from __future__ import annotations

import http.client
import os
import resource
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from smtp_load import free_port, run_smtp_source, start_sink, stop_sink, wait_port

TICK = os.sysconf("SC_CLK_TCK")


def python_loop_seconds(iterations: int = 10_000_000, runs: int = 3) -> float:
    """Best of `runs` timings of an empty `for` loop."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(iterations):
            pass
        best = min(best, time.perf_counter() - started)
    return best


def smtp_ceiling(messages: int, sessions: int, size: int, reuse: bool = True) -> float:
    """msg/s from smtp-source straight into smtp-sink: no queue, no disk. reuse: as
    run_smtp_source (False: a connection per message)."""
    port = free_port()
    sink = start_sink(port)
    try:
        wait_port(port)
        return run_smtp_source(port, messages, sessions, size, reuse=reuse).rate
    finally:
        stop_sink(sink)


def machine_ticks() -> tuple[int, int]:
    """(all, idle) clock ticks of every core since boot; idle counts iowait too (a core
    waiting on the disk is one mailgate could use)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields), fields[3] + fields[4]  # user nice system IDLE IOWAIT irq softirq steal


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (its own, not its children's)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def own_cpu() -> float:
    """CPU seconds of this process and of the children it has reaped (smtp-source, wrk)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def mailgate_processes() -> dict[int, tuple[str, float]]:
    """Each running `mailgate serve` process: pid -> (its role, CPU seconds so far). The
    role is its `--role` (a child) or "serve" (the one started)."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if b"mailgate" not in b" ".join(args) or b"serve" not in args:
                continue
            role = args[args.index(b"--role") + 1].decode() if b"--role" in args else "serve"
            found[int(entry.name)] = (role, process_cpu(int(entry.name)))
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours
            continue
    return found


# mailgate's histograms of a commit's stages (metrics.py), read as _sum and _count
STAGES = (
    "mailgate_accept_commit_seconds",
    "mailgate_store_commit_seconds",
    "mailgate_store_commit_group_writes",
    "mailgate_store_sync_seconds",
)


def stage_sums(metrics_url: str) -> dict[str, float]:
    """The _sum and _count of each stage histogram on mailgate's /metrics (summed there
    over serve's processes); empty when it does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as answer:
            text = answer.read().decode()
    except (OSError, http.client.HTTPException, ValueError):
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in STAGES:
            sums[name] = float(value)
    return sums


@dataclass(frozen=True)
class Stages:
    """Where a run's commits spent their time: the averages over the run."""

    wait: float | None  # s the door waited for each commit (None: no door commits)
    group: float  # s a commit group took in the write turn
    writes: float  # writes per group
    sync: float  # s per fdatasync (0: none, e.g. PostgreSQL)

    @classmethod
    def between(
        cls, before: dict[str, float], after: dict[str, float], from_start: bool = False
    ) -> Stages | None:
        """The averages between two scrapes; None when either failed (an empty `before`
        stands for the server's start only with from_start)."""

        def mean(name: str) -> float | None:
            n = after.get(name + "_count", 0.0) - before.get(name + "_count", 0.0)
            total = after.get(name + "_sum", 0.0) - before.get(name + "_sum", 0.0)
            return total / n if n else None

        if not after or not (before or from_start):
            return None
        wait, group, writes, sync = (mean(name) for name in STAGES)
        return cls(wait, group or 0.0, writes or 0.0, sync or 0.0)

    def describe(self) -> str:
        text = f"commit wait {self.wait * 1e3:.2f} ms: " if self.wait is not None else ""
        text += f"groups of {self.writes:.1f} writes in {self.group * 1e3:.2f} ms"
        return text + (f", sync {self.sync * 1e3:.2f} ms" if self.sync else "")


@dataclass(frozen=True)
class CpuUse:
    """What the machine did during one measured run."""

    wall: float  # seconds
    busy: float  # CPU seconds the whole machine was busy (every core)
    load: float  # of which the load generator and receiver (subtracted per message)
    idle_share: float  # idle + iowait over all ticks, 0..1
    messages: int
    # mailgate's processes by role (summed when several share one): CPU seconds
    by_role: tuple[tuple[str, float], ...] = ()
    stages: Stages | None = None  # given mailgate's /metrics

    @property
    def per_message_us(self) -> float:
        """CPU per message of the server under test, in µs."""
        return (self.busy - self.load) / self.messages * 1e6

    def describe(self) -> str:
        text = f"{self.per_message_us:6,.0f} µs CPU/msg, {self.idle_share:4.0%} idle"
        if self.by_role:  # where mailgate's CPU went: which process a change moved
            split = ", ".join(f"{r} {cpu / self.messages * 1e6:,.0f}" for r, cpu in self.by_role)
            text += f" [{split}]"
        if self.stages is not None:
            text += f" {{{self.stages.describe()}}}"
        return text


class CpuMeter:
    """Started just before a measured run, stopped just after it. The load side is this
    process and the children it reaps in between (smtp-source, wrk) plus the live
    processes named in `load_pids` (smtp-sink). With `metrics_url` (mailgate's /metrics)
    it also reads where the run's commits spent their time."""

    def __init__(self, load_pids: tuple[int, ...] = (), metrics_url: str | None = None) -> None:
        self._pids = load_pids
        self._metrics_url = metrics_url
        self._stages = stage_sums(metrics_url) if metrics_url else {}
        self._mailgate = mailgate_processes()
        self._ticks = machine_ticks()
        self._load = self._load_cpu()
        self._started = time.monotonic()

    def _load_cpu(self) -> float:
        return own_cpu() + sum(process_cpu(pid) for pid in self._pids)

    def stop(self, messages: int) -> CpuUse:
        wall = time.monotonic() - self._started
        total, idle = machine_ticks()
        d_total, d_idle = total - self._ticks[0], idle - self._ticks[1]
        by_role: dict[str, float] = {}
        for pid, (role, cpu) in mailgate_processes().items():
            before = self._mailgate.get(pid, (role, 0.0))[1]  # started since: all of it
            by_role[role] = by_role.get(role, 0.0) + cpu - before
        stages = None
        if self._metrics_url:
            stages = Stages.between(self._stages, stage_sums(self._metrics_url))
        return CpuUse(
            wall=wall,
            busy=(d_total - d_idle) / TICK,
            load=self._load_cpu() - self._load,
            idle_share=d_idle / d_total if d_total else 0.0,
            messages=max(messages, 1),
            by_role=tuple(sorted(by_role.items())),
            stages=stages,
        )


@dataclass(frozen=True)
class Machine:
    cores: int
    loop_seconds: float
    ceiling: float | None  # msg/s, smtp-source -> smtp-sink, 2 KB
    sessions: int
    messages: int
    # the same with a connection per message (smtp-source without -d)
    ceiling_per_connection: float | None = None

    def header(self) -> str:
        line = f"machine: {self.cores} cores, 10M-iteration Python loop {self.loop_seconds:.3f} s"
        if self.ceiling is not None:
            line += (
                f", ceiling {self.ceiling:,.0f} msg/s (smtp-source -> smtp-sink, no queue; "
                f"2 KB, {self.sessions} sessions, {self.messages:,} messages)"
            )
        if self.ceiling_per_connection is not None:
            line += f"; {self.ceiling_per_connection:,.0f} msg/s with a connection per message"
        return line


def header(sessions: int | None, messages: int = 20_000, per_connection: int = 0) -> Machine:
    """Measure the machine, print the header line and return it (the ceiling only with
    a session count: benches without SMTP skip it; with per_connection, also the ceiling
    of that many messages sent a connection each)."""
    ceiling = smtp_ceiling(messages, sessions, 2048) if sessions else None
    fresh = None
    if sessions and per_connection:
        fresh = smtp_ceiling(per_connection, sessions, 2048, reuse=False)
    machine = Machine(
        os.cpu_count() or 1, python_loop_seconds(), ceiling, sessions or 0, messages, fresh
    )
    print(machine.header(), flush=True)
    return machine


@dataclass(frozen=True)
class Rate:
    """A measured rate and what the machine spent on it."""

    rate: float  # msg/s
    cpu: CpuUse

    def describe(self, ceiling: float | None = None) -> str:
        text = f"{self.rate:7,.0f} msg/s  {self.cpu.describe()}"
        return text + (f"  {self.rate / ceiling:.2f}x ceiling" if ceiling else "")
