"""Which network addresses marble may fetch from, read the way the system resolver reads them.

A URL's host is an address in any spelling the resolver accepts (dotted IPv4 and its numeric
forms: decimal `2130706433`, hex `0x7f000001`, octal `0177.0.0.1`, shortened `127.1`; IPv6
in brackets, with a zone) or a name. Names are resolved, and every address they resolve to
is checked; the fetch then connects to an address that was checked (tasks/ingest/fetch_proxy.py),
so a second look-up cannot answer differently.

An address is refused unless it is globally routable unicast: loopback, private, link-local
(cloud metadata lives at 169.254.169.254), unspecified, multicast, shared (100.64.0.0/10),
reserved, documentation and benchmarking ranges are refused, and so is any IPv6 address that
embeds such an IPv4 address (IPv4-mapped, IPv4-translated, IPv4-compatible, 6to4, NAT64,
Teredo). `allowed_hosts` holds exact "host:port" pairs that are fetched all the same (the
built-in data served on 127.0.0.1); `allow_private` lifts the address check altogether.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]  # (host, port) -> addresses as strings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)  # RFC 1918 and IPv6 unique local addresses


class AddressRefused(Exception):
    """A host must not be fetched; `reason` is the counted refusal reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse_address(host: str) -> IPAddress | None:
    """The address a host names literally, in any spelling the resolver accepts; None for a
    name. Brackets and an IPv6 zone (`%eth0`) are stripped."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:  # inet_aton is what the resolver uses for IPv4 in numeric form
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries, for every form that can reach them."""
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _TRANSLATED or any(ip in net for net in _NAT64):
        out.append(low)
    if ip in _COMPATIBLE and int(ip) > 1:  # ::a.b.c.d (:: and ::1 are judged as they are)
        out.append(low)
    return out


def _own_refusal(ip: IPAddress) -> str | None:
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        return "unspecified_address"
    if ip.is_loopback:
        return "loopback_address"
    if ip.is_link_local:
        return "link_local_address"
    if ip.is_multicast:
        return "multicast_address"
    if ip.version == 4 and ip in _SHARED:
        return "shared_address"
    if any(ip.version == net.version and ip in net for net in _PRIVATE):
        return "private_address"
    if not ip.is_global:  # reserved, documentation, benchmarking, broadcast, ...
        return "reserved_address"
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why an address must not be fetched (a counted reason), or None when it may be. An
    IPv6 address that carries an IPv4 address is judged by that address, which is where a
    connection to it would go."""
    if ip.version == 6:
        embedded = _embedded_ipv4(ip)
        if embedded:
            reasons = [_own_refusal(inner) for inner in embedded]
            return next((r for r in reasons if r is not None), None)
    return _own_refusal(ip)


def normalise_host_port(host: str, port: int | None, scheme: str = "http") -> str:
    """ "host:port" as the allow-list spells it: lower case, literal addresses in canonical
    form, the scheme's default port filled in."""
    port = port or (443 if scheme == "https" else 80)
    address = parse_address(host)
    name = host.lower().rstrip(".") if address is None else str(address)
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def literal_refusal(host: str) -> str | None:
    """The refusal reason of a host that needs no look-up: a literal address or a loopback
    name. None for any other name: it is checked when resolved (`resolve_checked`)."""
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return "loopback_address"
    address = parse_address(host)
    return None if address is None else address_refusal(address)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def resolve_checked(
    host: str,
    port: int,
    allowed_hosts: Iterable[str] = (),
    allow_private: bool = False,
    resolver: Resolver = system_resolver,
    scheme: str = "http",
) -> str:
    """The address to connect to for host:port, checked; raises AddressRefused.

    Every address the name resolves to must pass (one bad answer refuses the host), and the
    caller connects to the returned address itself, not to the name again."""
    allowed = allow_private or normalise_host_port(host, port, scheme) in set(allowed_hosts)
    if not allowed:
        reason = literal_refusal(host)
        if reason:
            raise AddressRefused(reason, f"{host} is a {reason.replace('_', ' ')}")
    literal = parse_address(host)
    if literal is not None:
        return str(literal)
    try:
        answers = resolver(host.rstrip("."), port)
    except (OSError, UnicodeError) as e:
        raise AddressRefused("unresolvable_host", f"{host} does not resolve: {e}") from None
    if not answers:
        raise AddressRefused("unresolvable_host", f"{host} does not resolve")
    addresses = [parse_address(a) for a in answers]
    if not allowed:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise AddressRefused(
                    reason, f"{host} resolves to {address}, a {reason.replace('_', ' ')}"
                )
    return str(addresses[0])
