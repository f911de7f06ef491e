"""Test doubles for Kafka clients that broke for good."""

from __future__ import annotations

from pydantic import BaseModel

from imagegen.errors import FatalClientError

FENCED = "kafka: PRODUCER_FENCED: fenced by a newer producer"


class BrokenPublisher:
    """A publisher whose client broke for good: every publish fails with the fatal error."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.attempts += 1
        raise FatalClientError(FENCED)

    async def close(self) -> None:
        return None
