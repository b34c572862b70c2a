"""The vendor SDK tests run the real server of the domain tests (HTTP, SMTP relay,
delivery to a scripted SMTP sink that stands for the recipients' mail server, DNS on
loopback): each SDK is pointed at `mail.server.http_url`, and what it sent is read back
from `mail.received(n)`. Recipients at `INBOX` (inbox.test) are delivered to the sink."""

from tests.domains.conftest import INBOX, Mail, ca, dns_zone, mail

__all__ = ["INBOX", "Mail", "ca", "dns_zone", "mail"]
