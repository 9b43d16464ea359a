"""Limits that hold against hostile clients, as pure policy: message rates, failed logins.

Nothing here sends, reads the database or keeps a task: the caller acts on the answers.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from .codes import Close


class Refused(Exception):
    """A connection refused by a limit: close it with ``code`` and ``reason``."""

    def __init__(self, code: Close, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RateLimiter:
    """A token bucket per connection: ``rate`` messages a second, bursts up to ``burst``."""

    __slots__ = ("_allowance", "_burst", "_last", "_rate", "refused_in_a_row")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._allowance = self._burst
        self._last = time.monotonic()
        self.refused_in_a_row = 0

    def check(self) -> float:
        """0 when the message may go ahead, else seconds until one may."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic()
        self._allowance = min(self._burst, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if self._allowance >= 1:
            self._allowance -= 1
            self.refused_in_a_row = 0
            return 0.0
        self.refused_in_a_row += 1
        return (1 - self._allowance) / self._rate


class TokenRates:
    """A :class:`RateLimiter` per access token, for requests without a connection (HTTP)."""

    MAX_TOKENS = 100_000

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._limiters: OrderedDict[str, RateLimiter] = OrderedDict()

    def check(self, key: str) -> float:
        """0 when a request of token ``key`` may go ahead, else seconds until one may."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = RateLimiter(self._rate, self._burst)
            while len(self._limiters) > self.MAX_TOKENS:
                self._limiters.popitem(last=False)
        else:
            self._limiters.move_to_end(key)
        return limiter.check()


class FailureThrottle:
    """Refuses a client address for ``window`` seconds after ``limit`` failed logins in it."""

    MAX_ADDRESSES = 100_000

    def __init__(self, *, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked_for(self, address: str) -> float:
        """Seconds this address stays refused; 0 when it may try."""
        failures = self._recent(address)
        if self._limit <= 0 or len(failures) < self._limit:
            return 0.0
        return max(0.0, failures[-1] + self._window - time.monotonic())

    def failed(self, address: str) -> None:
        self._recent(address).append(time.monotonic())
        self._failures.move_to_end(address)
        while len(self._failures) > self.MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque(maxlen=max(self._limit, 1)))
        horizon = time.monotonic() - self._window
        while failures and failures[0] < horizon:
            failures.popleft()
        return failures
