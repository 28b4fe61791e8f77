"""Throttle clients that keep sending wrong access keys, with bounded memory."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


def client_address(remote: str | None, forwarded_for: str | None, trusted_proxies: frozenset[str]) -> str:
    """The address to throttle: the peer, or, when the peer is a trusted proxy, the nearest
    untrusted address in X-Forwarded-For (behind a TLS proxy every CRM shares the proxy's address)."""
    address = remote or "-"
    if address in trusted_proxies and forwarded_for:
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if hop and hop not in trusted_proxies:
                return hop
    return address


class FailureThrottle:
    """Counts failures per address in fixed one-minute windows; at most ``max_addresses`` tracked
    (least recently failing forgotten first), so a flood of addresses cannot exhaust memory."""

    def __init__(self, limit_per_min: int, max_addresses: int, clock: Callable[[], float]) -> None:
        self._limit = limit_per_min
        self._max = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def blocked(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it is not blocked."""
        entry = self._seen.get(address)
        if entry is None:
            return None
        start, count = entry
        left = start + 60 - self._clock()
        if left <= 0:
            del self._seen[address]
            return None
        return left if count >= self._limit else None

    def failed(self, address: str) -> None:
        """Record one failure from ``address``."""
        now = self._clock()
        start, count = self._seen.pop(address, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        self._seen[address] = (start, count + 1)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
