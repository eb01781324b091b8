"""Webhook URLs: what a submit may name and where a delivery may go.

`check_webhook_url` accepts an https URL whose host resolves only to public addresses (http, and
private, loopback or link-local addresses too, only with WEBHOOK_ALLOW_PRIVATE). Delivery runs the
same check again at every attempt (`resolve_webhook`), and the request goes to the addresses that
check resolved (DNS may have changed since the submit; no second lookup can slip in another).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048


class InvalidWebhook(ValueError):
    """A webhook URL we will not call; the message is meant for the user."""


class DeliveryError(Exception):
    """One attempt failed in a way worth retrying (connection refused or reset, timeout, DNS)."""


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the addresses it may be called at."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses (tests replace this to fake DNS). Raises socket.gaierror."""
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


# IANA's special-purpose address registries (iana-ipv4-special-registry, iana-ipv6-special-registry),
# plus the deprecated blocks still routed by some stacks. A webhook goes to none of them, not even
# the few marked globally reachable (anycast relays and AS112 servers receive no webhooks).
SPECIAL_IPV4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24",
        "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
        "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    )
)  # fmt: skip
# IPv6: only global unicast (2000::/3) may be called, less these blocks inside it.
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
SPECIAL_IPV6 = tuple(
    ipaddress.IPv6Network(n)
    for n in ("2001::/23", "2001:db8::/32", "2620:4f:8000::/48", "3fff::/20")
)  # fmt: skip
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: the IPv4 inside decides


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and routes to: mapped, 6to4 or the NAT64 well-known prefix."""
    if addr.ipv4_mapped:
        return addr.ipv4_mapped
    if addr.sixtofour:
        return addr.sixtofour
    if addr in NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _kind(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if addr.is_loopback:
        return "a loopback"
    if addr.is_link_local:
        return "a link-local"
    if addr.is_private:
        return "a private"
    return "a reserved (special-purpose)"


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to this address, or None when it may."""
    addr = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if addr.is_multicast or addr.is_unspecified:
        return f"{addr} is not a host address"
    if allow_private:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            problem = address_problem(str(inner), allow_private)
            return problem and f"{addr} carries {inner}, which is not public ({problem})"
        public = addr in GLOBAL_UNICAST and not any(addr in net for net in SPECIAL_IPV6)
    else:
        public = not any(addr in net for net in SPECIAL_IPV4)
    if not public:
        return f"{addr} is {_kind(addr)} address (allowed only with WEBHOOK_ALLOW_PRIVATE=true)"
    return None


def _parse(url: str, allow_private: bool) -> tuple[str, str, int, str]:
    """Check the URL's form (no DNS); returns (scheme, ascii host, port, path and query)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidWebhook("The webhook URL is empty.")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhook(f"The webhook URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidWebhook("The webhook URL may not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidWebhook("The webhook URL is not a valid URL (check its host and port).") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        hint = "" if allow_private or scheme != "http" else " (http is allowed only with WEBHOOK_ALLOW_PRIVATE=true)"
        raise InvalidWebhook(f"The webhook URL must start with https://{hint}.")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook("The webhook URL may not contain a user name or password.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidWebhook("The webhook URL has no host name.")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidWebhook("The webhook URL's host name is not a valid domain name.") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not path.isascii():
        raise InvalidWebhook("The webhook URL's path and query must be ASCII: percent-encode other characters.")
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve_webhook(url: str, allow_private: bool) -> Target:
    """Check a webhook URL and resolve its host: InvalidWebhook when it may not be called (a bad
    form, or any of its addresses is private, loopback, link-local, reserved or multicast unless
    allowed), DeliveryError when its name does not resolve just now."""
    scheme, host, port, path = _parse(url, allow_private)
    literal = True
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        literal = False
        try:
            addresses = resolve(host, port)
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise DeliveryError(f"the host name {host} does not resolve ({exc})") from None
        if not addresses:
            raise DeliveryError(f"the host name {host} has no address") from None
    for address in addresses:
        problem = address_problem(address, allow_private)
        if problem and literal:
            raise InvalidWebhook(f"The webhook URL may not point at this address: {problem}.")
        if problem:  # what the name resolves to stays unsaid: the answer would map internal DNS
            raise InvalidWebhook(
                f"The webhook URL's host {host} does not resolve to public addresses only; webhooks go to "
                "public hosts (others only with WEBHOOK_ALLOW_PRIVATE=true)."
            )
    return Target(url.strip(), scheme, host, port, path, tuple(addresses))


def check_webhook_url(url: str, allow_private: bool) -> str:
    """The URL to store (stripped) when a webhook may be sent to it; raises InvalidWebhook with a
    message for the user otherwise, a name that does not resolve included."""
    try:
        return resolve_webhook(url, allow_private).url
    except DeliveryError as exc:
        raise InvalidWebhook(f"The webhook URL cannot be used: {exc}.") from None


def webhook_for_submit(raw: str | None, owner: str | None, settings) -> str | None:
    """The submit's `webhook` field: None when absent or blank, else the checked URL. An ownerless
    job's webhook is signed with WEBHOOK_SECRET, so without one it is refused."""
    if raw is None or not raw.strip():
        return None
    url = check_webhook_url(raw, settings.webhook_allow_private)
    if owner is None and not settings.webhook_secret:
        raise InvalidWebhook(
            "Webhooks need an API key here: this server has no WEBHOOK_SECRET to sign "
            "the webhooks of requests without one."
        )
    return url
