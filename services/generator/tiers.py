"""Weighted polling of the tier topics: paid work overtakes a free backlog, free work still moves.

Policy (DECISIONS.md #6)
- One consumer per tier topic (`jobs.realtime`, `jobs.standard`, `jobs.economy`). All are
  members of the group the generator always used (`<namespace>.generator`): Kafka assigns
  each topic's partitions among the members subscribed to it, so N pods split every tier,
  committed offsets carry over from the single-consumer generator, and KEDA reads one
  group's lag per topic. (One consumer with pause/resume would need pause/resume in the
  `Consumer` port; separate consumers need nothing new and keep each tier's fetch apart.)
- A pod consumes only the tiers of `IMAGEGEN_GENERATOR_TIERS` (default: all). On
  Kubernetes each tier has its own Deployment (`generator-realtime`, ...) scaled by KEDA on
  that topic's lag; the weights then apply among the chosen tiers only (one tier: all picks).
- `WeightedTierConsumer` holds at most ONE message per tier (the tier's head) - the least
  that tells which tiers have work ready - and never buffers a backlog in Python. While a
  tier has no head, one poll of its consumer is in flight, and the generator waits for
  whichever tier answers first (no periodic polling of every tier). A GPU
  makes one image at a time, so the consumer loop asks for the next record only when the
  previous one is done.
- Among the tiers whose head is ready, a smooth weighted round-robin (nginx's algorithm)
  picks the next one. With the default weights realtime=6, standard=3, economy=1 and all
  three busy, every 10 picks go 6/3/1, interleaved (R S R E R R S R S R ...), never in
  bursts. A tier with nothing ready is skipped and its share goes to the others, so an idle
  GPU never waits for a weight.
- A guaranteed minimum share (`IMAGEGEN_GENERATOR_TIER_MIN_SHARE`, default 5%) lifts any
  tier configured below it (a weight of 0 included), so free work never starves: under
  constant paid load economy still gets max(its weight share, the minimum share).
- Offsets: the `ConsumerLoop` that drives this consumer commits a record only after its
  handler returned (its outputs are durable), through the consumer that delivered it.
  Heads not yet picked are never committed: on stop or crash they are redelivered.

Limits: a held head's consumer is not polled while other tiers are picked - at most
about sum(weights)/weight picks for its tier (10 images for economy by default), well
inside `max.poll.interval.ms` (10 min) for images of seconds. If its partition is
reassigned meanwhile (a pod joined), the new owner may run it too: a duplicate that the
idempotent handlers downstream absorb (deterministic event ids, content-addressed blobs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from imagegen.errors import ConfigurationError
from imagegen.kafka.ports import Consumer, Record, interrupt_poll
from schemas.topics import Tier

log = logging.getLogger(__name__)

DEFAULT_TIER_WEIGHTS = "realtime=6,standard=3,economy=1"
DEFAULT_MIN_SHARE = 0.05
ALL_TIERS = ",".join(t.value for t in Tier)


def parse_tiers(text: str) -> list[Tier]:
    """`realtime,standard` -> the tiers a pod consumes, in registry order; empty: every tier."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    chosen: set[Tier] = set()
    for name in names:
        try:
            chosen.add(Tier(name))
        except ValueError:
            raise ConfigurationError(
                f"IMAGEGEN_GENERATOR_TIERS: unknown tier {name!r}; expected a comma list of "
                f"{[t.value for t in Tier]}"
            ) from None
    return [t for t in Tier if t in chosen] if chosen else list(Tier)


def parse_weights(text: str) -> dict[Tier, float]:
    """`realtime=6,standard=3,economy=1` -> weights; a tier left out gets 0 (then the min share)."""
    weights: dict[Tier, float] = dict.fromkeys(Tier, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            tier = Tier(name.strip())
            weight = float(value)
        except ValueError:
            raise ConfigurationError(
                f"IMAGEGEN_GENERATOR_TIER_WEIGHTS: bad entry {part!r}; expected tier=weight "
                f"with tier one of {[t.value for t in Tier]}"
            ) from None
        if not sep or weight < 0:
            raise ConfigurationError(
                f"IMAGEGEN_GENERATOR_TIER_WEIGHTS: bad entry {part!r}; weights are numbers >= 0"
            )
        weights[tier] = weight
    if not any(weights.values()):
        raise ConfigurationError("IMAGEGEN_GENERATOR_TIER_WEIGHTS: at least one weight must be > 0")
    return weights


def with_min_share(weights: Mapping[Tier, float], min_share: float) -> dict[Tier, float]:
    """Raise the weights below `min_share` of the total until every tier has at least that share."""
    if not 0.0 <= min_share * len(weights) < 1.0:
        raise ConfigurationError(
            f"IMAGEGEN_GENERATOR_TIER_MIN_SHARE must be in [0, 1/{len(weights)}), got {min_share}"
        )
    lifted = dict(weights)
    # Lifting one tier grows the total, which can push another just below: iterate to rest.
    for _ in range(len(lifted) + 1):
        total = sum(lifted.values())
        low = [t for t, w in lifted.items() if w < min_share * total - 1e-12]
        if not low:
            break
        rest = sum(w for t, w in lifted.items() if t not in low)
        floor = min_share * rest / (1.0 - min_share * len(low))
        for tier in low:
            lifted[tier] = floor
    return lifted


class TierPicker:
    """Smooth weighted round-robin over the tiers that are ready (deterministic, O(tiers))."""

    def __init__(self, weights: Mapping[Tier, float]) -> None:
        if any(w <= 0 for w in weights.values()):
            raise ConfigurationError("tier weights must be > 0 (apply with_min_share first)")
        self.weights = dict(weights)
        self._current: dict[Tier, float] = dict.fromkeys(weights, 0.0)

    @classmethod
    def from_settings(
        cls, text: str, min_share: float, tiers: Sequence[Tier] | None = None
    ) -> TierPicker:
        """The picker over `tiers` (default: all) with their configured weights."""
        weights = parse_weights(text)
        chosen = {t: weights[t] for t in (tiers or list(Tier))}
        if not any(chosen.values()):
            # Every tier this pod serves was weighted 0 (a pod of the economy tier alone,
            # say): with nothing to share against, the weights mean nothing - equal ones.
            chosen = dict.fromkeys(chosen, 1.0)
        return cls(with_min_share(chosen, min_share))

    def shares(self) -> dict[Tier, float]:
        total = sum(self.weights.values())
        return {t: w / total for t, w in self.weights.items()}

    def pick(self, ready: set[Tier]) -> Tier:
        """The tier to serve next among `ready` (non-empty)."""
        candidates = [t for t in self.weights if t in ready]
        if not candidates:
            raise ValueError("pick() needs at least one ready tier")
        total = 0.0
        for tier in candidates:
            self._current[tier] += self.weights[tier]
            total += self.weights[tier]
        chosen = max(candidates, key=lambda t: self._current[t])
        self._current[chosen] -= total
        return chosen


class WeightedTierConsumer:
    """A `Consumer` over one consumer per tier that yields records in weighted tier order.

    Each tier without a head has one poll of its consumer in flight at a time (up to
    `tier_poll_s`), kept across calls: `poll` waits for whichever tier answers first, so an
    idle generator wakes about once per `tier_poll_s` per tier (it used to poll every tier
    every 0.1 s), and a record that arrives on one tier is picked at once rather than after
    every other tier's poll has run out. A poll still in flight when its answer is no longer
    awaited is kept, not lost: what it returns becomes that tier's head next time.
    """

    def __init__(
        self,
        consumers: Mapping[Tier, Consumer],
        topics: Mapping[Tier, str],
        picker: TierPicker,
        *,
        tier_poll_s: float = 1.0,
    ) -> None:
        self._consumers = dict(consumers)
        self._tier_of = {topics[t]: t for t in consumers}
        self._picker = picker
        # Bounds how long close() waits for the polls in flight (unless interrupted first).
        self._tier_poll_s = tier_poll_s
        self._heads: dict[Tier, Record] = {}
        self._polls: dict[Tier, asyncio.Task[Record | None]] = {}
        self.picked: dict[Tier, int] = dict.fromkeys(consumers, 0)

    def _start_polls(self) -> None:
        """One poll in flight for every tier that has neither a head nor a poll."""
        for tier, consumer in self._consumers.items():
            if tier not in self._heads and tier not in self._polls:
                self._polls[tier] = asyncio.create_task(
                    consumer.poll(self._tier_poll_s), name=f"tier-poll-{tier.value}"
                )

    def _harvest(self) -> None:
        """Keep what the finished polls returned; raise the first poll's error, if any."""
        for tier, task in list(self._polls.items()):
            if not task.done():
                continue
            del self._polls[tier]
            record = task.result()  # a fatal client error ends the loop, as a poll's would
            if record is not None:
                self._heads[tier] = record

    async def poll(self, timeout: float) -> Record | None:
        self._start_polls()
        # Heads that arrived meanwhile count (a realtime job published during a long image):
        # a poll that has a record ready finishes within a turn of the event loop.
        await asyncio.sleep(0)
        self._harvest()
        if not self._heads:
            self._start_polls()
            await asyncio.wait(
                self._polls.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            self._harvest()
        if not self._heads:
            return None
        tier = self._picker.pick(set(self._heads))
        self.picked[tier] += 1
        record = self._heads.pop(tier)
        log.debug("event=tier_picked tier=%s waiting=%s", tier.value, sorted(self._heads))
        return record

    def interrupt(self) -> None:
        """End every tier's poll in flight (a stop): `poll` then returns what came, if any."""
        for consumer in self._consumers.values():
            interrupt_poll(consumer)

    async def commit(self, record: Record) -> None:
        await self._consumers[self._tier_of[record.topic]].commit(record)

    async def close(self) -> None:
        """Close every tier consumer once its poll in flight is over; unpicked heads (and
        whatever those polls return) stay uncommitted and are redelivered."""
        polls = list(self._polls.values())
        self._polls.clear()
        self._heads.clear()
        await asyncio.gather(*polls, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._consumers.values()))
