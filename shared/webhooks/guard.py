"""Server-side request forgery guard: webhooks go to public addresses only.

Checked when a job is submitted and again before every delivery, since DNS can
change in between. WEBHOOK_ALLOWED_NETWORKS lists networks exempt from it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

import httpx

from shared.errors import InvalidInput
from shared.text_rules import unstorable

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Unresolvable(InvalidInput):
    """The name did not resolve: at submit a refusal, at delivery a failure worth retrying."""

    code = "webhook_unresolvable"


def parse_networks(text: str) -> list[IPNetwork]:
    try:
        return [ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInput(f"WEBHOOK_ALLOWED_NETWORKS: {exc}") from exc


# IPv6 forms that carry an IPv4 address a router or translator may deliver to.
NAT64_NETWORKS = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # well-known prefix (RFC 6052)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use prefix (RFC 8215)
)
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses inside an IPv4-mapped, IPv4-compatible, 6to4, Teredo or NAT64 form."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client)
    if address in IPV4_COMPATIBLE or any(address in network for network in NAT64_NETWORKS):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def refusal(address: IPAddress) -> str | None:
    """Why an address is not public, or None; an IPv6 form is judged by its IPv4 too."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # the same address, written as IPv6
    own = _own_refusal(address)
    if own is not None or isinstance(address, ipaddress.IPv4Address):
        return own
    for inner in embedded_ipv4(address):
        reason = _own_refusal(inner)
        if reason is not None:
            return f"{reason} (carried inside an IPv6 address)"
    return None


def _own_refusal(address: IPAddress) -> str | None:
    checks = [
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local (cloud metadata lives here)"),
        (address.is_unspecified, "unspecified"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not globally routable"),
    ]
    return next((reason for failed, reason in checks if failed), None)


@dataclass(frozen=True)
class Target:
    """A webhook URL that passed the guard, and the addresses it may be sent to."""

    url: httpx.URL
    host: str
    port: int
    addresses: list[IPAddress]


def parse_webhook_url(url: str) -> httpx.URL:
    """The URL as the sender will parse it (httpx), or InvalidInput naming what is wrong.

    The guard and the sender must read a URL the same way, or a URL could pass
    one and mean another host to the other; anything httpx cannot take is refused.
    """
    if any(ord(c) <= 32 or ord(c) == 127 for c in url) or unstorable(url):
        raise InvalidInput(
            "webhook_url must not contain spaces, control characters or invalid UTF-8"
        )
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidInput(f"webhook_url {url[:200]!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise InvalidInput(f"webhook_url must be an http(s) URL with a host, not {url[:200]!r}")
    if parsed.userinfo:
        # They would be logged, stored and sent as Basic auth to whoever the name points at.
        raise InvalidInput(
            "webhook_url must not carry credentials (user:password@); receivers verify "
            "the webhook-signature header instead"
        )
    if port is not None and not 0 < port < 65536:
        raise InvalidInput(f"webhook_url port {port} is out of range")
    return parsed


def _not_public(host: str) -> str:
    """One refusal for every name that is not public, whatever it resolves to or fails to.

    Saying which address a name resolves to (or that it resolves at all) would let
    callers map the service's internal DNS; the log keeps the details for operators.
    """
    return (
        f"webhook_url host {host!r} does not resolve to public addresses only; webhooks go "
        "to public addresses only (WEBHOOK_ALLOWED_NETWORKS can allow a network)"
    )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve_target(url: str, allowed: list[IPNetwork]) -> Target:
    """Parse, resolve once, and check every address; the sender connects only to these."""
    parsed = parse_webhook_url(url)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        log.info("webhook host %r does not resolve: %s", host, exc)
        raise Unresolvable(_not_public(host)) from exc
    except (OSError, ValueError, UnicodeError) as exc:
        log.info("webhook host %r cannot be resolved: %s", host, exc)
        raise InvalidInput(_not_public(host)) from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not any(address in network for network in allowed):
            reason = refusal(address)
            if reason and _literal(host) is not None:  # the caller wrote the address itself
                raise InvalidInput(
                    f"webhook_url host {host} is a {reason} address; webhooks go to public "
                    "addresses only (WEBHOOK_ALLOWED_NETWORKS can allow a network)"
                )
            if reason:
                log.info("webhook host %r refused: it resolves to %s (%s)", host, address, reason)
                raise InvalidInput(_not_public(host))
        if address not in addresses:
            addresses.append(address)
    return Target(parsed, host, port, addresses)


def loggable_url(url: str) -> str:
    """Scheme, host, port and path: never a query string or credentials, which may be secrets."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return "<unparseable URL>"
    return str(parsed.copy_with(userinfo=None, query=None, fragment=None))


def check_webhook_url(url: str, allowed: list[IPNetwork]) -> None:
    """Raise InvalidInput naming the reason unless `url` is http(s) to public addresses only."""
    resolve_target(url, allowed)
