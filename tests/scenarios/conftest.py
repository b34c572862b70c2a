"""Scenario stories use the delivery peers (DNS server, SMTP sink) and fixtures."""

from tests.delivery.conftest import dns_zone, sink, world

__all__ = ["dns_zone", "sink", "world"]
