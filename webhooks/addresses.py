"""Where a webhook may be sent: public http(s) addresses, and the private ones WEBHOOK_ALLOWED_HOSTS names.

A URL's host is resolved and refused if any of its addresses is private, loopback, link-local,
multicast, reserved or unspecified; the request then goes to the address that was checked (the
host stays in the Host header and TLS name), so a second DNS answer cannot point it elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from .models import WebhookError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    url: str  # as registered
    host: str
    address: str  # the checked address the request connects to


def _kind(ip: IPAddress) -> str:
    """What makes an address unfit for a webhook ('' if nothing does)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 (mapped, 6to4, Teredo's client) is judged as that address.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and _kind(embedded):
            return _kind(embedded)
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "" if ip.is_global else "non-public"


def _allowed(host: str, ip: IPAddress) -> bool:
    for entry in settings.WEBHOOK_ALLOWED_HOSTS:
        if entry == host:
            return True
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:  # a hostname entry
            continue
    return False


def check_url(url: str, resolve=socket.getaddrinfo) -> Target:
    """The URL's target if a webhook may be sent there; WebhookError saying why not otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookError(f"Not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookError("Only http:// and https:// URLs can receive webhooks.")
    if parts.username is not None or parts.password is not None:
        raise WebhookError("The URL must not contain a user name or password.")
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookError("The URL has no host.")
    try:
        found = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookError(f"{host} cannot be resolved ({exc}).") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))
    if not addresses:
        raise WebhookError(f"{host} has no address.")
    for ip in addresses:
        kind = _kind(ip)
        if kind and not _allowed(host, ip):
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise WebhookError(
                f"{shown} is not a public address ({kind}): webhooks go to public addresses only, "
                "unless WEBHOOK_ALLOWED_HOSTS names it."
            )
    return Target(url=url, host=host, address=str(addresses[0]))


def pinned_url(target: Target) -> str:
    """The URL with its host replaced by the checked address."""
    parts = urlsplit(target.url)
    address = f"[{target.address}]" if ":" in target.address else target.address
    netloc = address + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
