"""The scheduler's handlers, behind one object: `admission.py` turns requests into admitted
jobs, `outcomes.py` moves them on with the events about their images. Money rules are in
`ledger.py`, dispatch rules in `dispatch.py`, retries and failover in `retries.py`, the
outbox and its relay in `outbox.py`.
"""

from __future__ import annotations

import asyncio

import asyncpg

from imagegen.kafka import Publisher
from schemas.topics import TopicNames
from services.scheduler.admission import Admission
from services.scheduler.catalogue import Catalogue, offered
from services.scheduler.dispatch import Dispatcher
from services.scheduler.jobs import JobBook
from services.scheduler.ledger import Ledger
from services.scheduler.outbox import OutboxRelay
from services.scheduler.outcomes import Outcomes
from services.scheduler.overdue import OverdueAttempts
from services.scheduler.provider_health import ProviderHealth
from services.scheduler.retries import Retries
from services.scheduler.scenes_llm import SceneResolver, build_scene_resolver
from services.scheduler.settings import SchedulerSettings
from services.scheduler.ticker import Ticker


class Scheduler:
    """Admission and outcomes over one pool, ledger and outbox, with the relay and ticker."""

    def __init__(
        self,
        settings: SchedulerSettings,
        pool: asyncpg.Pool,
        publisher: Publisher,
        topics: TopicNames,
        catalogue: Catalogue | None = None,
        scenes: SceneResolver | None = None,
    ) -> None:
        self._settings = settings
        self.scenes = scenes or build_scene_resolver(settings)
        self._pool = pool
        self._topics = topics
        self._catalogue = catalogue or offered(settings)
        self.ledger = Ledger(settings, topics.events)
        self._dispatcher = Dispatcher(settings, topics)
        self._book = JobBook(topics, self.ledger, self._dispatcher)
        self.health = ProviderHealth(
            settings.provider_failure_threshold, settings.provider_cooldown_s
        )
        self._retries = Retries(
            settings, topics, self.ledger, self._dispatcher, self._book, self.health
        )
        overdue = OverdueAttempts(
            settings, topics, self._dispatcher, self._book, self._retries.failed
        )
        self.relay = OutboxRelay(pool, publisher, interval_s=settings.relay_interval_s)
        self.ticker = Ticker(
            pool,
            self._dispatcher,
            interval_s=settings.tick_interval_s,
            on_staged=self.relay.wake,
            overdue=overdue.fail,
        )
        self.admission = Admission(
            settings,
            pool,
            self._catalogue,
            self._book,
            self._dispatcher,
            self.scenes,
            self.health,
            self.relay.wake,
        )
        self.outcomes = Outcomes(
            settings,
            pool,
            self.ledger,
            self._book,
            self._dispatcher,
            self._retries,
            self.health,
            self.relay,
            self.ticker,
        )
        # The consumer loops' handlers.
        self.on_request = self.admission.on_request
        self.on_requests = self.admission.on_requests
        self.on_event = self.outcomes.on_event
        self.on_events = self.outcomes.on_events

    async def run_background(self) -> None:
        """The outbox relay and the retry ticker, until `stop_background()`."""
        await asyncio.gather(self.relay.run(), self.ticker.run())

    def stop_background(self) -> None:
        self.ticker.stop()
        self.relay.stop()
