"""Server-side request forgery guard: webhooks go to public addresses only.

Checked when a job is submitted and again before every delivery, since DNS can
change in between. WEBHOOK_ALLOWED_NETWORKS lists networks exempt from it.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from shared.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def check_webhook_url(url: str, allowed: list[IPNetwork]) -> None:
    """Raise InvalidInput naming the reason unless `url` is http(s) to public addresses only."""
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise InvalidInput(f"webhook_url must be an http(s) URL with a host, not {url!r}")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        infos = socket.getaddrinfo(parsed.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"webhook_url host {parsed.hostname!r} does not resolve: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if any(address in network for network in allowed):
            continue
        reason = refusal(address)
        if reason:
            raise InvalidInput(
                f"webhook_url host {parsed.hostname!r} resolves to {address}, a {reason} "
                "address; webhooks go to public addresses only "
                "(WEBHOOK_ALLOWED_NETWORKS can allow a network)"
            )
