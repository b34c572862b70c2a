"""serve's child processes: start them, wait until each says it is up, start another
when one dies, and stop them (SIGTERM, then SIGKILL after a grace period).

A child is `python -m mailgate serve --role <role>`; it writes one byte to the pipe
named by --ready-fd once it listens. A delivery child dies with its parent (Linux
PR_SET_PDEATHSIG): a leftover one would deliver what the restarted server takes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("mailgate")
START_TIMEOUT = 60.0  # seconds for all children to say they are up
STOP_TIMEOUT = 45.0  # seconds a child may take to drain before it is killed
RESTART_DELAY = 1.0  # seconds between a child's death and its replacement


def _die_with_parent() -> None:
    """In the child, before exec."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _terminate(proc: asyncio.subprocess.Process, role: str) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        log.error("%s process %s did not stop; killing it", role, proc.pid)
        proc.kill()
        await proc.wait()


class Supervisor:
    """The children of one serving process.

    env: the environment a new child gets (made when it starts: the ports may be known
    only then). on_death(role, pid): awaited after a child died and before its
    replacement starts (a dead delivery child's leases are handed back there)."""

    def __init__(
        self,
        config_path: Path | None,
        env: Callable[[], dict[str, str]],
        on_death: Callable[[str, int], Awaitable[None]],
    ) -> None:
        self.config_path = config_path
        self.env = env
        self.on_death = on_death
        self.children: dict[int, tuple[str, asyncio.subprocess.Process]] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._stopping = False

    async def start(self, roles: list[str]) -> None:
        """Start one child per role and wait until each says it is up (until then the
        parent's /readyz says 503: a client that connected earlier would stay on the
        parent alone)."""
        started = [asyncio.Event() for _ in roles]
        for role, event in zip(roles, started, strict=True):
            self._tasks.setdefault(role, []).append(asyncio.create_task(self._keep(role, event)))
        waits = [asyncio.create_task(event.wait()) for event in started]
        _, late = await asyncio.wait(waits, timeout=START_TIMEOUT)
        for wait in late:
            wait.cancel()
        if late:
            log.error("%d child processes did not start", len(late))

    async def _keep(self, role: str, started: asyncio.Event) -> None:
        while not self._stopping:
            config = ["--config", str(self.config_path)] if self.config_path else []
            read_end, write_end = os.pipe()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "mailgate", "serve", "--role", role, *config),
                    "--ready-fd",
                    str(write_end),
                    env=self.env(),
                    pass_fds=(write_end,),
                    preexec_fn=_die_with_parent,
                )
            finally:
                os.close(write_end)
            self.children[proc.pid] = (role, proc)
            # b"" when the child died first: the loop starts another
            said = await asyncio.to_thread(os.read, read_end, 1)
            os.close(read_end)
            if said:
                started.set()
            code = await proc.wait()
            if self._stopping:
                return
            del self.children[proc.pid]
            log.error("%s process %s exited with %s; starting another", role, proc.pid, code)
            await self.on_death(role, proc.pid)
            await asyncio.sleep(RESTART_DELAY)

    async def stop(self, role: str) -> None:
        """SIGTERM the children of one role and wait for them: ingress children drain
        their requests and sessions, a delivery child finishes or releases its claims."""
        self._stopping = True
        procs = [proc for r, proc in self.children.values() if r == role]
        await asyncio.gather(*(_terminate(proc, role) for proc in procs))
        tasks = self._tasks.get(role, [])
        if tasks:
            await asyncio.wait(tasks, timeout=5)
