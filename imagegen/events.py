"""Publishing events on the `events` topic, keyed by job id."""

from __future__ import annotations

from imagegen.kafka.ports import Publisher
from imagegen.telemetry import current_traceparent
from schemas.events import EventBase


class EventEmitter:
    """Stamps the source and trace on an event and publishes it keyed by its job id."""

    def __init__(self, publisher: Publisher, topic: str, source: str) -> None:
        self._publisher = publisher
        self._topic = topic
        self.source = source

    async def emit(self, event: EventBase) -> None:
        stamped = event.model_copy(
            update={"source": event.source or self.source, "traceparent": current_traceparent()}
        )
        await self._publisher.publish(self._topic, event.job_id or event.user_id, stamped)
