"""Provider health: a provider that keeps failing sits out a cool-down (a circuit breaker).

Fed from the events the scheduler already consumes: a `generation_failed` that the
generator marked retryable (5xx, timeouts, rate limits, connection errors) counts against
its provider, a `generation_completed` closes the provider's breaker. After `threshold`
retryable failures in a row the provider is taken out of the rotation for `cooldown_s`
and `imagegen_provider_cooldowns` is incremented; once the cool-down has passed it is
tried again, and one more failure (before any success) sends it straight back.
Permanent failures (bad input, a cancelled job) and content-policy refusals (the provider
worked: its safety system refused the prompt) say nothing about the provider's health and
are not counted (`counts_against`), even if a generator marked one retryable.

Kept in memory, per scheduler instance: each instance sees the outcomes of the jobs of its
partitions, a large enough sample of any provider's traffic to notice an outage, and a
restart forgets at worst one cool-down. The choice it steers (`order`) only reorders the
failover chain: providers in cool-down go last, so when every offer is cooling down the
chain is used as it is rather than failing the image.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from imagegen.metrics import instruments
from schemas.events import ErrorType, GenerationFailedData

log = logging.getLogger(__name__)
T = TypeVar("T")
_REMEMBERED_EVENTS = 4096
_NOT_THE_PROVIDERS_FAULT = frozenset({ErrorType.CANCELLED, ErrorType.CONTENT_POLICY_VIOLATION})


def counts_against(data: GenerationFailedData) -> bool:
    """Whether a failed attempt says the provider is unwell (see the module docstring)."""
    return data.retryable and data.error_type not in _NOT_THE_PROVIDERS_FAULT


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float = 0.0
    cooldowns: int = 0


class ProviderHealth:
    """Consecutive retryable failures per provider, and who is cooling down."""

    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}
        # Event ids already counted: a redelivered event must not count twice.
        self._seen: OrderedDict[str, None] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.threshold > 0 and self.cooldown_s > 0

    def _first_time(self, event_id: str | None) -> bool:
        if event_id is None:
            return True
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > _REMEMBERED_EVENTS:
            self._seen.popitem(last=False)
        return True

    def failure(self, provider: str, *, retryable: bool, event_id: str | None = None) -> bool:
        """Count one failed attempt; True when it takes `provider` out of the rotation."""
        if not provider or not retryable or not self.enabled or not self._first_time(event_id):
            return False
        breaker = self._breakers.setdefault(provider, _Breaker())
        now = self._clock()
        if breaker.open_until > now:
            return False  # already out; attempts dispatched before the cut-off still report
        breaker.failures += 1
        if breaker.failures < self.threshold:
            return False
        breaker.open_until = now + self.cooldown_s
        breaker.cooldowns += 1
        # Half-open after the cool-down: the next failure re-opens it at once.
        breaker.failures = self.threshold - 1
        instruments().provider_unavailable.add(1, {"provider": provider})
        log.warning(
            "event=provider_cooldown provider=%s failures=%d cooldown_s=%.1f",
            provider,
            self.threshold,
            self.cooldown_s,
        )
        return True

    def success(self, provider: str, *, event_id: str | None = None) -> None:
        """A completed image: the provider works; close its breaker."""
        if not provider or not self._first_time(event_id):
            return
        breaker = self._breakers.get(provider)
        if breaker is not None and (breaker.failures or breaker.open_until):
            if breaker.open_until > self._clock():
                log.info("event=provider_recovered provider=%s", provider)
            breaker.failures = 0
            breaker.open_until = 0.0

    def cooling(self, provider: str) -> bool:
        """Whether `provider` is out of the rotation now."""
        breaker = self._breakers.get(provider)
        return breaker is not None and breaker.open_until > self._clock()

    def cooling_down(self) -> frozenset[str]:
        now = self._clock()
        return frozenset(p for p, b in self._breakers.items() if b.open_until > now)

    def order(self, chain: Sequence[T], provider_of: Callable[[T], str]) -> list[T]:
        """`chain` with providers in cool-down moved last, each part in its own order."""
        return reorder(chain, provider_of, self.cooling_down())


def reorder(chain: Sequence[T], provider_of: Callable[[T], str], avoid: frozenset[str]) -> list[T]:
    """`chain` with offers of the `avoid`ed providers moved last (pure helper for planning)."""
    if not avoid:
        return list(chain)
    return [o for o in chain if provider_of(o) not in avoid] + [
        o for o in chain if provider_of(o) in avoid
    ]
