"""The events tests run the real server of the domain tests (delivery to a sink)."""

from tests.domains.conftest import ca, dns_zone, mail

__all__ = ["ca", "dns_zone", "mail"]
