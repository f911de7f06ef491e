from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from imagegen.settings import ServiceSettings
from schemas.topics import registry

_DAY_S = 24 * 3600


def replay_window_s() -> int:
    """Seconds of the events plus dead-letter topics' retention: how long after an event
    was applied a copy of it can still be read from Kafka (a dead letter re-driven at the
    end of its retention, then kept as long again in the events topic)."""
    retention_ms = {spec.role: int(spec.configs["retention.ms"]) for spec in registry()}
    return (retention_ms["events"] + retention_ms["deadletter"]) // 1000


class StorageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    storage_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Processed images stored at once (consumer lanes): each waits on S3"
        " copies and one database transaction.",
    )
    applied_events_retention_s: int = Field(
        default=30 * _DAY_S,
        description="How long the id of an applied job event is kept (`applied_events`), so"
        " that a redelivered copy is recognised and not applied twice (costs would add up"
        " again). Copies come from uncommitted offsets (seconds:"
        " IMAGEGEN_KAFKA_COMMIT_INTERVAL_MS), from a consumer group whose offsets expired"
        " re-reading the events topic from its earliest record (retention.ms 7 days), and"
        " from `imagegen dlq redrive`: a dead letter (kept 7 days) re-driven into the"
        " events topic, or a re-driven job whose re-run emits the same event ids, lands"
        " there and can be re-read for another 7 days. Kafka deletes whole segments,"
        " so a record can outlive retention.ms by up to segment.ms (7 days by default):"
        " 2 x (7 + 7) = 28 days at worst, hence 30. Refused below the events plus"
        " dead-letter topics' retention (14 days).",
    )
    applied_events_prune_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="How often each storage instance deletes applied_events rows older than"
        " the retention (instances share the work: rows are claimed with SKIP LOCKED).",
    )
    applied_events_prune_batch: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="Rows deleted per statement while pruning: each batch is its own short"
        " transaction, so the job tracker's inserts never wait behind a long delete.",
    )

    retain_deleted_stories: bool = Field(
        default=False,
        description="Production (with `imagegen storage lifecycle apply`): a deleted story's"
        " objects are tagged and kept a year, then the bucket's lifecycle rule expires them"
        " and clean-up removes their rows; the API answers 404 for them at once. False:"
        " they are removed at once (a bucket without that rule, the local stack).",
    )

    @field_validator("applied_events_retention_s")
    @classmethod
    def _covers_replays(cls, value: int) -> int:
        floor = replay_window_s()
        if value < floor:
            raise ValueError(
                f"IMAGEGEN_APPLIED_EVENTS_RETENTION_S={value} is shorter than the events plus"
                f" dead-letter topics' retention ({floor} s): an event re-driven or re-read"
                " from Kafka after its id was pruned would be applied twice"
            )
        return value
