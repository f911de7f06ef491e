"""Wake-ups for event streams when the projection commits new events.

A stream reads the event log, then waits on its user's signal before reading again.
`LocalEventSignal` wakes streams of this process; a PostgreSQL LISTEN/NOTIFY listener
calling `notify` on it would wake the streams of every replica (the projection would
`pg_notify` inside its transaction so the wake-up is sent only on commit).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class EventSignal(Protocol):
    """Tells waiting streams that a user's event log has grown."""

    def listen(self, user_id: str) -> asyncio.Event:
        """An event set at the next `notify(user_id)`; take it before reading the log."""
        ...

    def notify(self, user_id: str) -> None:
        """Wake every stream that listens for this user."""
        ...


class LocalEventSignal:
    """In-process: one asyncio.Event per user with listeners, replaced at each notify."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def listen(self, user_id: str) -> asyncio.Event:
        event = self._events.get(user_id)
        if event is None:
            event = self._events[user_id] = asyncio.Event()
        return event

    def notify(self, user_id: str) -> None:
        event = self._events.pop(user_id, None)
        if event is not None:
            event.set()
