"""The sandbox's receiving side: what a sandbox key's recipient "answers", chosen by its
local part at SIMULATOR_DOMAIN, so that an application can see every outcome real mail
can have (statuses, events, DSNs, webhooks) without mail leaving the machine. Every
other address is captured: kept, readable through the API, never sent. Pure.

    delivered@    250, delivered
    bounced@      550 5.1.1 (a hard bounce: the address is put on the suppression list)
    deferred@     451 4.3.0 on the first attempt, delivered at the retry
    expired@      451 4.4.7 and at once past the queue lifetime: expired
    suppressed@   stopped at the door as if it were on the suppression list
    complained@   delivered, then reported as spam (a complaint: suppressed from now on)
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.delivery.outcome import Outcome, Verdict
from mailgate.models import Reply

SIMULATOR_DOMAIN = "simulator.mailgate.test"
SIMULATOR_HOST = "simulator.mailgate.test"  # the remote_host a simulated reply names
CAPTURED = Outcome(Verdict.DELIVERED, Reply(250, "2.0.0", "Captured: kept by mailgate, not sent"))


@dataclass(frozen=True, slots=True)
class Simulation:
    outcome: Outcome
    expire: bool = False  # settle as expired whatever the retry schedule says
    complaint: bool = False  # delivered, and then complained about


def _outcome(verdict: Verdict, code: int, enhanced: str, text: str) -> Outcome:
    return Outcome(verdict, Reply(code, enhanced, f"Simulated: {text}"), SIMULATOR_HOST)


def local_part(address: str) -> str | None:
    """The local part of a simulator address (lower case), None for any other address."""
    local, _, domain = address.rpartition("@")
    return local.lower() if domain.lower() == SIMULATOR_DOMAIN else None


def is_simulated_suppression(address: str) -> bool:
    return local_part(address) == "suppressed"


def simulate(address: str, attempts: int) -> Simulation:
    """What the simulator answers the `attempts`+1-th attempt to `address`."""
    local = local_part(address)
    if local == "delivered":
        return Simulation(_outcome(Verdict.DELIVERED, 250, "2.0.0", "delivered"))
    if local == "bounced":
        return Simulation(_outcome(Verdict.PERMANENT, 550, "5.1.1", "no such user"))
    if local == "deferred":
        if attempts == 0:
            return Simulation(_outcome(Verdict.TEMPORARY, 451, "4.3.0", "try again later"))
        return Simulation(_outcome(Verdict.DELIVERED, 250, "2.0.0", "delivered at the retry"))
    if local == "expired":
        text = "queue lifetime exceeded"
        return Simulation(_outcome(Verdict.TEMPORARY, 451, "4.4.7", text), expire=True)
    if local == "complained":
        outcome = _outcome(Verdict.DELIVERED, 250, "2.0.0", "delivered, then reported as spam")
        return Simulation(outcome, complaint=True)
    return Simulation(CAPTURED)
