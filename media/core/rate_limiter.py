"""Per-client token buckets for mutating HTTP requests: pure, time passed in as ``now``."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

MAX_CLIENTS: Final = 10_000


class RateLimiter:
    """``rate`` requests per second per client, bursts up to ``burst``; remembers the busiest
    ``max_clients`` clients (the least recently seen are forgotten first)."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, client: str, now: float) -> float:
        """0 when the request may go ahead (and is counted); else seconds until it could."""
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> int:
        """``Retry-After`` in whole seconds, never 0."""
        return max(1, math.ceil(wait))
