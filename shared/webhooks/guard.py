"""Server-side request forgery guard: webhooks go to public addresses only.

Checked when a job is submitted and again before every delivery, since DNS can
change in between. WEBHOOK_ALLOWED_NETWORKS lists networks exempt from it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import httpx

from shared.errors import InvalidInput
from shared.services.text_rules import unstorable

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


def refusal(address: IPAddress) -> str | None:
    """Why an address is not public, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
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
    if port is not None and not 0 < port < 65536:
        raise InvalidInput(f"webhook_url port {port} is out of range")
    return parsed


def resolve_target(url: str, allowed: list[IPNetwork]) -> Target:
    """Parse, resolve once, and check every address; the sender connects only to these."""
    parsed = parse_webhook_url(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unresolvable(f"webhook_url host {parsed.host!r} does not resolve: {exc}") from exc
    except (OSError, ValueError, UnicodeError) as exc:
        raise InvalidInput(f"webhook_url host {parsed.host!r} does not resolve: {exc}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not any(address in network for network in allowed):
            reason = refusal(address)
            if reason:
                raise InvalidInput(
                    f"webhook_url host {parsed.host!r} resolves to {address}, a {reason} "
                    "address; webhooks go to public addresses only "
                    "(WEBHOOK_ALLOWED_NETWORKS can allow a network)"
                )
        if address not in addresses:
            addresses.append(address)
    return Target(parsed, parsed.host, port, addresses)


def check_webhook_url(url: str, allowed: list[IPNetwork]) -> None:
    """Raise InvalidInput naming the reason unless `url` is http(s) to public addresses only."""
    resolve_target(url, allowed)
