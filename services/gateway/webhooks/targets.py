"""Where webhooks may be sent (SSRF rules), checked when a job is created and again
on every delivery.

- https anywhere; http only to hosts in `IMAGEGEN_WEBHOOK_ALLOWED_HOSTS`.
- No credentials in the URL, no control characters or spaces.
- With `IMAGEGEN_ENV=prod`, addresses that are not globally routable (private,
  loopback, link-local such as 169.254.169.254, multicast, reserved, CGNAT, unspecified,
  IPv4-mapped forms of those) are refused: a literal IP when the request arrives, every
  address the name resolves to at delivery time (so a name cannot be re-pointed at an
  internal address after it was accepted: DNS rebinding). The connection then goes to
  the address that was checked, not to a second lookup. Hosts on the allow-list are the
  operator's explicit choice and skip the address check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookUrlError(ValueError):
    """The URL may not receive webhooks (the message says why)."""


@dataclass(frozen=True)
class TargetPolicy:
    allowed_hosts: frozenset[str]
    refuse_internal: bool
    """True in production: non-global addresses are refused."""

    @classmethod
    def of(cls, allowed_hosts: list[str], env: str) -> TargetPolicy:
        hosts = frozenset(h.strip().lower().strip("[]") for h in allowed_hosts if h.strip())
        return cls(allowed_hosts=hosts, refuse_internal=env == "prod")


def internal_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public destination, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return internal_reason(address.ipv4_mapped)
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a globally routable address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, policy: TargetPolicy) -> SplitResult:
    """The parsed URL if it may receive webhooks; WebhookUrlError otherwise."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise WebhookUrlError("may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"is not a valid URL ({exc})") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        raise WebhookUrlError("must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("may not carry credentials (user:password@)")
    if port == 0:
        raise WebhookUrlError("port 0 is not a destination")
    allowed = host in policy.allowed_hosts
    if scheme == "http" and not allowed:
        raise WebhookUrlError(
            f"must use https (http is only allowed to the hosts the operator lists in"
            f" IMAGEGEN_WEBHOOK_ALLOWED_HOSTS; {host!r} is not one)"
        )
    if policy.refuse_internal and not allowed:
        address = _literal(host)
        reason = internal_reason(address) if address is not None else None
        if host == "localhost" or host.endswith(".localhost"):
            reason = "a loopback name"
        if reason is not None:
            raise WebhookUrlError(
                f"{host} is {reason}; webhooks go to public addresses only (or to the hosts"
                " the operator lists in IMAGEGEN_WEBHOOK_ALLOWED_HOSTS)"
            )
    return parts


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: the checked address, and the name it stands for."""

    url: str
    """The URL with the host replaced by the checked address."""
    host_header: str
    sni_hostname: str | None
    """For https: the name the certificate must match."""


async def resolve(url: str, policy: TargetPolicy) -> Target:
    """Check `url` again and pin it to one checked address (no second lookup later)."""
    parts = check_url(url, policy)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    address = _literal(host)
    if address is None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ConnectionError(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise ConnectionError(f"{host} resolves to no address")
        if policy.refuse_internal and host not in policy.allowed_hosts:
            for candidate in addresses:
                reason = internal_reason(candidate)
                if reason is not None:
                    raise WebhookUrlError(f"{host} resolves to {candidate}, {reason}")
        address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = parts.netloc.rsplit("@", 1)[-1]
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    https = parts.scheme.lower() == "https"
    return Target(url=pinned, host_header=host_header, sni_hostname=host if https else None)
