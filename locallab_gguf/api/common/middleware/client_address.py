"""Which address a request comes from, believing forwarding headers only from trusted proxies.

Without trusted proxies the address is the TCP peer's, whatever the headers say: any client
can write `X-Forwarded-For`. Behind a proxy that is trusted, the forwarded chain is read from
the nearest hop back, and the first address that is not itself a trusted proxy is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from locallab_gguf.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# An IPv6 host is handed a whole /64 and may use any address in it; counting each address
# as a client would let one host multiply its budget.
IPV6_CLIENT_PREFIX = 64


class TrustedProxies:
    def __init__(self, proxies: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(_network(proxy) for proxy in proxies)

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def client_address(
        self, peer: str | None, forwarded: str | None, x_forwarded_for: str | None
    ) -> str:
        """The client's address as text (an IPv6 client as its /64 network)."""
        address = parse_address(peer) if peer else None
        if address is None:
            return peer or "unknown"
        if self.trusts(address):
            hops = forwarded_for(forwarded) if forwarded else _split(x_forwarded_for)
            for hop in reversed(hops):
                hop_address = parse_address(hop)
                if hop_address is None:
                    break  # an obfuscated or garbled hop: the last proxy is all we know
                address = hop_address
                if not self.trusts(address):
                    break
        return client_name(address)


def client_name(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False)
        return str(network)
    return str(address)


def parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for(header: str) -> list[str]:
    """The `for=` node of each element of an RFC 7239 Forwarded header, nearest hop last.

    'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"' -> ['192.0.2.60', '2001:db8::1'];
    an element without `for=` gives '' (which names no address).
    """
    nodes = []
    for element in header.split(","):
        node = ""
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for":
                node = _strip_port(value.strip().strip('"'))
        nodes.append(node)
    return nodes


def _strip_port(node: str) -> str:
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node


def _split(x_forwarded_for: str | None) -> list[str]:
    if not x_forwarded_for:
        return []
    return [hop.strip() for hop in x_forwarded_for.split(",")]


def _network(proxy: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(proxy.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(
            f"--trusted-proxy {proxy!r} is neither an IP address nor a network such as "
            "10.0.0.0/8; give the address of the proxy in front of this server"
        ) from exc
