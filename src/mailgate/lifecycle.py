"""Where a mailgate process is in its life: starting, ready or draining.

One object per process, made by the app and handed to every component that answers
clients: readiness checks read it, the ingresses refuse new work while draining.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    STARTING = "starting"  # listening, but the rest of the server is not up yet
    READY = "ready"
    DRAINING = "draining"  # finishing what is in flight; new work is refused


class Lifecycle:
    """The phase only moves forward: starting → ready → draining."""

    def __init__(self, phase: Phase = Phase.STARTING) -> None:
        self.phase = phase

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def drain(self) -> None:
        self.phase = Phase.DRAINING
