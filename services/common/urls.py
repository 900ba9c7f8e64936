"""Where a callback may go: the policy every ``callback_url`` passes, at job creation and again
at delivery (a row may hold a URL that never passed the API, and DNS changes).

Static checks (``check_callback_url``, no DNS, cheap enough for the request path): scheme
https (plain http only with ``webhook_allow_http``), no credentials in the URL, a host, a port
in 1..65535, and a host that is an IP literal in any spelling (``127.0.0.1``, ``2130706433``,
``0x7f.1``, ``017700000001``, ``127.1``, ``[::ffff:7f00:1]``) must be a public address.

Delivery check (``vet_callback_url``): the static checks, then the host is resolved and every
address it resolves to must be public; the caller connects only to those vetted addresses.

Public means ``ipaddress``'s ``is_global``, not multicast, and, for IPv6 addresses that carry
an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``), a
public embedded IPv4 address too. ``webhook_allowed_networks`` names the exceptions: CIDRs or
addresses (matched against the address) and host names (matched against the URL's host,
allowing whatever it resolves to).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from services.common.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses a connection to it would use (as strings).
Resolver = Callable[[str, int], Sequence[str]]

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCALHOST_NAMES = ("localhost", ".localhost")  # RFC 6761: always loopback


class CallbackRefused(ValueError):
    """The URL breaks the callback policy; ``reason`` names the rule broken."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CallbackTarget:
    url: str
    scheme: str
    host: str  # as the HTTP client sends it (Host header, TLS SNI), lower case, ASCII
    port: int
    address: IPAddress | None  # the host when it is an IP literal


def _ipv4_number(part: str) -> int | None:
    """One part of a WHATWG/inet_aton IPv4 host: decimal, 0x hex or leading-zero octal."""
    if part[:2].lower() == "0x":
        digits, base = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    try:
        return int(digits, base) if digits.isalnum() and digits.isascii() else None
    except ValueError:
        return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host names literally, in any spelling a resolver accepts; None for a name.

    Raises ``CallbackRefused`` for a host that looks numeric but is no valid address
    (``999.1.1.1``): a resolver might read it some other way.
    """
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    parts = text.removesuffix(".").split(".")
    last = parts[-1]
    numeric = last.isdigit() or (last[:2].lower() == "0x" and _ipv4_number(last) is not None)
    if not numeric:
        return None  # a DNS name (WHATWG: a host ends in a number or it is a name)
    numbers = [_ipv4_number(part) for part in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise CallbackRefused(f"host {host} is not a valid IP address")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise CallbackRefused(f"host {host} is not a valid IP address")
    value = values[-1]
    for index, n in enumerate(values[:-1]):
        value += n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None  # Teredo (2001::/32) is not global in itself


def _kind(address: IPAddress) -> str:
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-global"


def non_public_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        reason = non_public_reason(address.ipv4_mapped)  # judged as the IPv4 address it is
        return None if reason is None else f"{address} maps to {reason}"
    if not address.is_global or address.is_multicast:
        return f"{address} is not a public address ({_kind(address)})"
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and (reason := non_public_reason(inner)) is not None:
            return f"{address} embeds {reason}"
    return None


def _allow_list(settings: Settings) -> tuple[list[Network], set[str]]:
    networks: list[Network] = []
    hosts: set[str] = set()
    for entry in settings.webhook_allowed_networks:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry:
                raise ValueError(f"webhook_allowed_networks: {entry!r} is not a CIDR") from None
            hosts.add(entry.lower().removesuffix("."))
    return networks, hosts


def _allowed(address: IPAddress, networks: list[Network]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a.version == n.version and a in n for a in candidates for n in networks)


def _refuse_unless_allowed(
    address: IPAddress, host: str, networks: list[Network], hosts: set[str]
) -> None:
    reason = non_public_reason(address)
    if reason is not None and host not in hosts and not _allowed(address, networks):
        raise CallbackRefused(reason)


def check_callback_url(url: str, settings: Settings) -> CallbackTarget:
    """The static rules (no DNS); the parsed target, or ``CallbackRefused`` naming the rule."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise CallbackRefused(f"callback_url is not a valid URL: {exc}") from None
    scheme = parsed.scheme
    if scheme == "http" and not settings.webhook_allow_http:
        raise CallbackRefused("callback_url must use https (plain http is not allowed here)")
    if scheme not in ("http", "https"):
        raise CallbackRefused(f"callback_url must use https, not {scheme or 'no scheme'}")
    if parsed.userinfo:
        raise CallbackRefused("callback_url must not contain credentials (user:password@)")
    try:
        host = parsed.raw_host.decode("ascii").lower()
    except UnicodeDecodeError:
        raise CallbackRefused("callback_url has an invalid host") from None
    if not host:
        raise CallbackRefused("callback_url must name a host")
    port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise CallbackRefused(f"callback_url port {port} is out of range 1-65535")
    address = _check_host(host, settings)
    return CallbackTarget(url=url, scheme=scheme, host=host, port=port, address=address)


def _check_host(host: str, settings: Settings) -> IPAddress | None:
    """The static host rules: an IP literal (or a localhost name) must be public unless
    allowed; the literal's address, or None for a DNS name."""
    address = parse_ip_literal(host)
    networks, hosts = _allow_list(settings)
    name = host.removesuffix(".")
    if address is not None:
        _refuse_unless_allowed(address, name, networks, hosts)
    elif name == _LOCALHOST_NAMES[0] or name.endswith(_LOCALHOST_NAMES[1]):
        _refuse_unless_allowed(ipaddress.IPv4Address("127.0.0.1"), name, networks, hosts)
    return address


def _resolve_vetted(host: str, port: int, settings: Settings, resolve: Resolver) -> list[IPAddress]:
    networks, hosts = _allow_list(settings)
    name = host.removesuffix(".")
    addresses: list[IPAddress] = []
    for text in resolve(host, port):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise CallbackRefused(f"{host} resolved to {text!r}, not an address") from None
        _refuse_unless_allowed(address, name, networks, hosts)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    return addresses


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``getaddrinfo`` gives for a TCP connection to ``host:port``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def vet_callback_url(
    url: str, settings: Settings, resolve: Resolver = system_resolver
) -> tuple[CallbackTarget, list[IPAddress]]:
    """Delivery-time check: the static rules, then every resolved address must be public
    (or allowed). Returns the target and the vetted addresses to connect to, and only to.
    ``CallbackRefused`` for a policy breach; ``OSError`` when the name does not resolve."""
    target = check_callback_url(url, settings)
    if target.address is not None:
        return target, [target.address]
    return target, _resolve_vetted(target.host, target.port, settings, resolve)


def check_dicom_node(host: str, port: int, settings: Settings) -> IPAddress | None:
    """The callback policy for a DICOM node (C-STORE destination), without DNS: a host
    name or address, a port in 1..65535, an address that is public unless allowed
    (``webhook_allowed_networks``, as for callbacks)."""
    host = host.strip().lower()
    if not host or any(c.isspace() or c in "/@:[]" for c in host.strip("[]")):
        raise CallbackRefused(f"DICOM host {host!r} is not a host name or address")
    if not 1 <= port <= 65535:
        raise CallbackRefused(f"DICOM port {port} is out of range 1-65535")
    return _check_host(host, settings)


def vet_dicom_node(
    host: str, port: int, settings: Settings, resolve: Resolver = system_resolver
) -> list[IPAddress]:
    """Delivery-time check of a DICOM node: the static rules, then every address the host
    resolves to; the caller connects to one of these addresses only."""
    address = check_dicom_node(host, port, settings)
    if address is not None:
        return [address]
    return _resolve_vetted(host.strip().lower(), port, settings, resolve)
