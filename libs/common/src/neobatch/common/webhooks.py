"""Signed webhooks, the parts the console and the notifier share. Pure: no I/O.

- the event types an endpoint may choose (OpenAI's four batch events and our
  `job.status_changed`);
- signing secrets in the Standard Webhooks format (`whsec_<base64 of 32 random bytes>`) and the
  `webhook-signature` header (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per
  live secret, space-separated, as OpenAI's SDK and the Standard Webhooks libraries verify);
- the URL policy against server-side request forgery: https (unless the operator allows http),
  no userinfo, and no loopback, private, link-local, metadata, multicast or reserved address
  unless it is inside an operator's allow-list. The console checks a URL when it is registered;
  the notifier checks it again, and every address its host resolves to, before each delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from neobatch.common.errors import ConfigError
from neobatch.common.settings import Env, Settings

BATCH_EVENT_TYPES = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
JOB_STATUS_CHANGED = "job.status_changed"
EVENT_TYPES = (*BATCH_EVENT_TYPES, JOB_STATUS_CHANGED)
SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
# Cloud metadata services answer on these even where they are not link-local (AWS IPv6,
# Alibaba); link-local 169.254.169.254 is refused as link-local anyway.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _check_networks(value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"NEOBATCH_WEBHOOK_ALLOWED_NETWORKS: {item!r} is not a CIDR"
            ) from None


class UrlRefused(Exception):
    """A webhook URL (or an address its host resolves to) the policy refuses."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UrlPolicy(Settings, frozen=True, kw_only=True):
    """What webhook URLs may point at (console and notifier read the same variables). The
    defaults are production's: https, public addresses only."""

    allow_http: Annotated[
        bool,
        Env(
            "NEOBATCH_WEBHOOK_ALLOW_HTTP",
            "Webhook URLs may be plain http:// (the local stack; never in production)",
        ),
    ] = False
    # The local stack allows loopback for its receivers; production leaves it empty.
    allowed_networks: Annotated[
        tuple[str, ...],
        Env(
            "NEOBATCH_WEBHOOK_ALLOWED_NETWORKS",
            "CIDRs webhook URLs may reach although private, loopback or link-local "
            "(comma-separated, e.g. `127.0.0.0/8,::1/128`; empty: public addresses only)",
            check=_check_networks,
        ),
    ] = ()

    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)


class WebhookTarget(msgspec.Struct, frozen=True):
    """A checked URL: its scheme, host (an IP literal without brackets, or a name) and port."""

    url: str
    scheme: str
    host: str
    port: int
    literal: IPAddress | None


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """What a listing shows of a secret: its prefix and last four characters."""
    return f"{SECRET_PREFIX}****{secret[-4:]}"


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature, `v1,<base64>`."""
    key = secret.removeprefix(SECRET_PREFIX)
    raw = base64.b64decode(key) if secret.startswith(SECRET_PREFIX) else secret.encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(raw, signed, hashlib.sha256).digest()).decode()


def signature_header(
    live_secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes
) -> str:
    """The `webhook-signature` value: one signature per live secret (rotation's grace)."""
    return " ".join(signature(s, webhook_id, timestamp, body) for s in live_secrets)


def webhook_id(endpoint_id: str, event_id: str) -> str:
    """The `webhook-id` of one event's delivery to one endpoint: fixed, so every retry (by any
    notifier) carries the same one and a receiver can drop what it already took."""
    digest = hashlib.sha256(f"{endpoint_id}:{event_id}".encode()).hexdigest()[:32]
    return f"wh_{digest}"


def check_url(url: str, policy: UrlPolicy) -> WebhookTarget:
    """The URL's target, or `UrlRefused` saying why not. A host name is not resolved here:
    `check_address` is applied to what it resolves to (by the console at registration, by the
    notifier at every connection)."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused("invalid_url", f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("invalid_url", f"url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UrlRefused("invalid_url", "url must be an https:// URL")
    if scheme == "http" and not policy.allow_http:
        raise UrlRefused("insecure_url", "url must use https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("invalid_url", "url must not carry a user name or password")
    host = parts.hostname or ""
    if not host or any(c.isspace() for c in url):
        raise UrlRefused("invalid_url", "url has no host")
    if parts.fragment:
        raise UrlRefused("invalid_url", "url must not have a fragment")
    literal = _ip_literal(host)
    if literal is not None:
        check_address(literal, policy)
    elif not _is_hostname(host):
        raise UrlRefused("invalid_url", f"url host {host[:64]!r} is not a host name")
    default = 443 if scheme == "https" else 80
    return WebhookTarget(url, scheme, host, port or default, literal)


def check_address(address: IPAddress, policy: UrlPolicy) -> None:
    """Refuse an address a webhook must not reach, unless the allow-list holds it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in policy.networks()):
        return
    kind = _forbidden_kind(address)
    if kind:
        raise UrlRefused("forbidden_address", f"url resolves to a {kind} address ({address})")


def check_addresses(addresses: Iterable[str], policy: UrlPolicy) -> list[str]:
    """Every resolved address checked (one refused refuses the host: a name that resolves to
    a private address among public ones is an attack); the list, or `UrlRefused`."""
    checked = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        check_address(address, policy)
        checked.append(text)
    if not checked:
        raise UrlRefused("unresolvable_url", "url host resolves to no address")
    return checked


def _forbidden_kind(address: IPAddress) -> str:
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private or not address.is_global:
        return "private"
    if address.is_reserved:
        return "reserved"
    return ""


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return (
        all(
            0 < len(label) <= 63 and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
            for label in labels
        )
        and not host.replace(".", "").isdigit()
    )
