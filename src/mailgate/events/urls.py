"""Where a webhook may be sent: the URL's form (https unless configured, no credentials)
and its host's addresses, resolved and checked like delivery's (reachable.py), so a
webhook cannot be pointed at loopback, a private network or a cloud metadata address.
The sender connects to an address checked here, not to a second lookup of the name (no
DNS rebinding)."""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from mailgate.reachable import IPAddress, Network, forbidden

MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class Destination:
    url: str
    scheme: str
    host: str  # as written, without brackets (SNI, and the name that is resolved)
    port: int
    netloc: str  # host[:port] as written (the Host header)


def parse_url(url: str, allow_http: bool) -> Destination | str:
    """The URL's parts, or why it cannot be a webhook URL."""
    if len(url) > MAX_URL:
        return f"URL longer than {MAX_URL} characters"
    if not url.isascii():
        return "must be ASCII (percent-encode the path; an IDN host as xn--)"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in (("https", "http") if allow_http else ("https",)):
        return "must be an https:// URL" + ("" if allow_http else " (webhooks.allow_http is off)")
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (sign with the webhook secret instead)"
    if parts.fragment:
        return "must not have a #fragment"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "must not hold spaces or control characters"
    default = 443 if parts.scheme == "https" else 80
    return Destination(url, parts.scheme, parts.hostname, port or default, parts.netloc)


async def addresses(
    host: str, resolver: dns.asyncresolver.Resolver, allowed: list[Network]
) -> list[IPAddress] | str:
    """The host's addresses a webhook may go to, or why none: every address must pass
    (a name with one private address among public ones is refused, not filtered)."""
    try:
        found: list[IPAddress] = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        found = []
        for rtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(host, rtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException:
                return f"{host} could not be resolved now"
            found.extend(ipaddress.ip_address(r.to_text()) for r in answer)
        if not found:
            return f"{host} has no address"
    if any(forbidden(a, allowed) for a in found):  # which one is not said: no mapping of
        return f"{host} is not a public address"  # internal names through our resolver
    return found
