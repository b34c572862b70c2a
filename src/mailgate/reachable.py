"""Which addresses mailgate may connect to: delivery (MX hosts) and webhooks (endpoint
URLs) connect only to globally reachable unicast addresses unless config allows more."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits to that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Not globally reachable, though Python 3.11 says is_global: IPv4-compatible addresses
# (deprecated, RFC 4291 2.5.5.1) and local-use NAT64 (RFC 8215).
_NEVER_GLOBAL = (
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated, RFC 3879), not global
)
# IANA special-purpose IPv4 that Python 3.11 still calls global: 192.0.0.0/24 (protocol
# assignments; 192.0.0.192 served cloud metadata)
_NEVER_GLOBAL_V4 = (ipaddress.ip_network("192.0.0.0/24"),)


def embedded(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address an IPv6 one carries to its real destination:
    IPv4-mapped, 6to4 (2002::/16), Teredo (2001::/32) and NAT64 (64:ff9b::/96)."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def forbidden(address: IPAddress, allowed: list[Network]) -> bool:
    """Anything but a globally reachable unicast address, unless allowed by config:
    loopback, private, carrier-grade NAT (100.64.0.0/10, where cloud metadata lives),
    link-local, reserved, multicast, and IPv6 forms that lead to such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed):
        return False
    if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _NEVER_GLOBAL):
        return True
    if any(a in n for a in embedded(address) if a.version == 4 for n in _NEVER_GLOBAL_V4):
        return True
    return not all(a.is_global and not a.is_multicast for a in embedded(address))
