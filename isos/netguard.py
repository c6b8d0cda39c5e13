"""Which addresses a download may connect to: only publicly routable ones.

Used by `isos.download` after it resolved a URL's host; kept apart because
the classification is pure and has nothing to do with HTTP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Named separately so the refusal says what the address is, not just "private".
# AWS/GCP/Azure/OpenStack, AWS ECS tasks, AWS over IPv6, Alibaba Cloud.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # a NAT64 gateway turns these into the embedded IPv4
# What people mean by "private" (RFC 1918, IPv6 ULA). ipaddress.is_private also covers documentation and
# benchmark ranges; those are refused too, as "not publicly routable", which is the truer description.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def first_refused(addresses: Iterable[str], allowed_networks: tuple[str, ...]) -> tuple[IPAddress, str] | None:
    """The first address a download may not connect to, with the reason; None if all may be used."""
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if _in_networks(address, networks):
            continue
        why = refusal_reason(address)
        if why is not None:
            return address, why
    return None


def _in_networks(address: IPAddress, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)


def refusal_reason(address: IPAddress) -> str | None:
    """Why a download may not connect to `address` ("a loopback address"), or None when it is public."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = refusal_reason(address.ipv4_mapped)
            return None if inner is None else f"an IPv4-mapped form of {address.ipv4_mapped}, {inner}"
        for kind, embedded in (
            ("6to4", address.sixtofour),
            ("Teredo", address.teredo[1] if address.teredo else None),
            ("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in NAT64_PREFIX else None),
        ):
            if embedded is not None and (inner := refusal_reason(embedded)) is not None:
                return f"a {kind} form of {embedded}, {inner}"
    for test, words in (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address in SHARED_ADDRESS_SPACE, "a shared (carrier-grade NAT) address"),
        (any(address in network for network in PRIVATE_NETWORKS), "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "an address that is not publicly routable"),
    ):
        if test:
            return words
    return None
