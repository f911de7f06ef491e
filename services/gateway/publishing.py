"""Send a command to the `requests` topic from inside the transaction that records it.

The rows a request writes and the command it sends stand or fall together: the caller's
transaction commits only once the broker has the command, and rolls back (503, nothing
created) if it never gets it.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import HTTPException, status
from pydantic import BaseModel

from imagegen.kafka import Publisher
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


async def send(
    publisher: Publisher, settings: GatewaySettings, user_id: str, command: BaseModel
) -> None:
    """Publish keyed by user (one scheduler owns a user's budget); 503 if it fails."""
    try:
        await asyncio.wait_for(
            publisher.publish(settings.kafka.topics.requests, user_id, command),
            settings.publish_timeout_s,
        )
    except Exception as exc:
        log.warning(
            "event=publish_failed command=%s user_id=%s error=%r",
            type(command).__name__,
            user_id,
            exc,
        )
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the job queue is unavailable; nothing was created, please retry",
            headers={"Retry-After": "5"},
        ) from exc
