"""The dead-letter topic: the original bytes as value, the error in headers."""

from __future__ import annotations

from schemas.base import Contract

HEADER_ERROR_TYPE = "x-error-type"
HEADER_ERROR_MESSAGE = "x-error-message"
HEADER_ORIGINAL_TOPIC = "x-original-topic"
HEADER_ORIGINAL_PARTITION = "x-original-partition"
HEADER_ORIGINAL_OFFSET = "x-original-offset"
HEADER_FAILED_BY = "x-failed-by"
HEADER_FAILED_AT = "x-failed-at"
HEADER_ATTEMPTS = "x-attempts"

# Re-drive markers (`imagegen dlq redrive`): records in the dead-letter topic itself that say
# a message was republished; readers of the topic tell them from dead letters by this header.
HEADER_REDRIVE_OF = "x-redrive-of"
"""On a marker: `topic:partition:offset` of the original message that was re-driven."""
HEADER_REDRIVEN_AT = "x-redriven-at"
HEADER_REDRIVEN_BY = "x-redriven-by"
HEADER_REDRIVEN_FROM = "x-redriven-from"
"""On a republished message: `deadletter-topic:partition:offset` it was re-driven from."""


class DeadLetterHeaders(Contract):
    """What a dead-lettered message's headers say (documentation and parsing)."""

    error_type: str
    error_message: str
    original_topic: str
    original_partition: int
    original_offset: int
    failed_by: str
    failed_at: str
    attempts: int

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> DeadLetterHeaders:
        return cls(
            error_type=headers[HEADER_ERROR_TYPE],
            error_message=headers[HEADER_ERROR_MESSAGE],
            original_topic=headers[HEADER_ORIGINAL_TOPIC],
            original_partition=int(headers[HEADER_ORIGINAL_PARTITION]),
            original_offset=int(headers[HEADER_ORIGINAL_OFFSET]),
            failed_by=headers[HEADER_FAILED_BY],
            failed_at=headers[HEADER_FAILED_AT],
            attempts=int(headers.get(HEADER_ATTEMPTS, "1")),
        )

    def to_headers(self) -> dict[str, str]:
        return {
            HEADER_ERROR_TYPE: self.error_type,
            HEADER_ERROR_MESSAGE: self.error_message[:2000],
            HEADER_ORIGINAL_TOPIC: self.original_topic,
            HEADER_ORIGINAL_PARTITION: str(self.original_partition),
            HEADER_ORIGINAL_OFFSET: str(self.original_offset),
            HEADER_FAILED_BY: self.failed_by,
            HEADER_FAILED_AT: self.failed_at,
            HEADER_ATTEMPTS: str(self.attempts),
        }
