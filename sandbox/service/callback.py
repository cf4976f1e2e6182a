"""A submission's `callback_url`: only to hosts the operator allows, its record POSTed there once judged, retried a
few times when the receiver is unreachable or failing.

Allowed: the hosts named with `sbx serve --callback-allow` (none by default),
by name, address or network, matched against the URL's host as written; a
name is never resolved to be checked, so a name that resolves to loopback or
the cloud's metadata address is reached only if the operator named it.  A
client may otherwise make the service POST to anything it can reach (SSRF).

Retried: connection errors, timeouts and 5xx (the receiver may be restarting).
Final: any other answer, 4xx included (the receiver refuses this body; sending
it again changes nothing).  After the last attempt the record stays at GET
/submissions/{id}, and the failure is kept for the operator (/status).
Callers run this in a task of its own, so the backoff never holds up judging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from ..errors import ConfigError

ATTEMPTS = 4
FIRST_DELAY = 0.5  # seconds, doubled after each failed attempt (0.5, 1, 2)
TIMEOUT = 10.0
KEPT_FAILURES = 50
"""Callbacks that failed for good, kept for the operator's page (the latest)."""


@dataclass(frozen=True)
class Allowed:
    """The hosts callbacks may go to: names (exact, any case), addresses, networks."""

    names: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowed:
        names, networks = set(), []
        for entry in entries:
            for item in filter(None, (part.strip() for part in entry.split(","))):
                try:
                    networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                except ValueError:
                    if not item.replace("-", "").replace(".", "").isalnum():
                        raise ConfigError(f"--callback-allow {item!r}: expected a host name, an address or a "
                                          "network (10.0.0.0/8)") from None
                    names.add(item.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def refusal(self, url: str) -> str | None:
        """Why a callback may not go to `url`, or None."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            return f"callback_url: {e}"
        if parts.scheme not in ("http", "https") or not host:
            return "callback_url: expected an http:// or https:// URL with a host"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            allowed = host.rstrip(".") in self.names
        else:
            allowed = any(address in network for network in self.networks)
        return None if allowed else (f"callback_url: {host} is not an allowed callback host "
                                     "(sbx serve --callback-allow names them; none by default)")


async def post(url: str, body: dict[str, Any]) -> str | None:
    """None if the receiver took the record (a 2xx or 3xx answer), else why it did not, after the last attempt."""
    delay = FIRST_DELAY
    why = ""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for attempt in range(ATTEMPTS):
            if attempt:
                await anyio.sleep(delay)
                delay *= 2
            try:
                response = await client.post(url, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                continue
            if response.status_code < 500:
                return None if response.status_code < 400 else f"HTTP {response.status_code}"
            why = f"HTTP {response.status_code}"
    return f"{why} (after {ATTEMPTS} attempts)"
