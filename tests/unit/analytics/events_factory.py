"""Events of made-up jobs, as the services would emit them (for the analytics tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.events import event_id

BASE = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def _event(
    kind: str, job: str, user: str, at: datetime, data: dict[str, Any], *parts: object
) -> dict[str, Any]:
    return {
        "id": event_id(kind, job, *parts),
        "source": "test",
        "subject": f"jobs/{job}",
        "type": kind,
        "time": at.isoformat(),
        "job_id": job,
        "user_id": user,
        "data": data,
    }


def job_events(
    job: str,
    user: str,
    tier: str,
    *,
    images: int = 2,
    start: datetime = BASE,
    fail: set[int] = frozenset(),  # type: ignore[assignment]
    provider: str = "demo",
    model: str = "demo-model",
    cost: float = 0.02,
    score: float = 0.9,
    flagged: set[int] = frozenset(),  # type: ignore[assignment]
    unscored: dict[int, str] | None = None,
) -> list[dict[str, Any]]:
    """A job's events in emission order: queued, started, completed or failed, stored, end."""
    out = []
    t = start
    for i in range(images):
        out.append(
            _event(
                "generation_queued",
                job,
                user,
                t,
                {
                    "image_id": f"{job}-{i}",
                    "image_index": i,
                    "image_count": images,
                    "character_id": "c1",
                    "tier": tier,
                    "provider": provider,
                    "model": model,
                },
                i,
                1,
            )
        )
    for i in range(images):
        t += timedelta(seconds=3)
        out.append(
            _event(
                "generation_started",
                job,
                user,
                t,
                {
                    "image_id": f"{job}-{i}",
                    "image_index": i,
                    "backend": provider,
                    "model": model,
                    "queue_wait_ms": 1500 + 100 * i,
                },
                i,
                1,
            )
        )
        if i in fail:
            out.append(
                _event(
                    "generation_failed",
                    job,
                    user,
                    t,
                    {
                        "image_id": f"{job}-{i}",
                        "image_index": i,
                        "attempt": 1,
                        "error_type": "ProviderTimeout",
                        "error": "timed out",
                        "retryable": False,
                        "final": True,
                        "provider": provider,
                    },
                    i,
                    1,
                )
            )
            continue
        t += timedelta(seconds=4)
        out.append(
            _event(
                "generation_completed",
                job,
                user,
                t,
                {
                    "image_id": f"{job}-{i}",
                    "image_index": i,
                    "duration_ms": 4000,
                    "backend": provider,
                    "model": model,
                    "seed": 1,
                    "cost_usd": cost,
                    "provider": provider,
                },
                i,
                1,
            )
        )
        out.append(
            _event(
                "image_stored",
                job,
                user,
                t + timedelta(seconds=1),
                {
                    "image_id": f"{job}-{i}",
                    "image_index": i,
                    "character_id": "c1",
                    "kind": "pack",
                    "version": 1,
                    "size_bytes": 10,
                    "width": 64,
                    "height": 64,
                    "renditions": [],
                    "seed": 1,
                    "model": model,
                    "backend": provider,
                    "provider": provider,
                    "demo": True,
                    "cost_usd": cost,
                    "consistency_score": None if i in (unscored or {}) else score,
                    "not_scored_reason": (unscored or {}).get(i),
                    "flagged": i in flagged,
                },
                i,
                1,
            )
        )
    t += timedelta(seconds=2)
    done = images - len(fail)
    out.append(
        _event(
            "pack_completed",
            job,
            user,
            t,
            {
                "status": "completed" if not fail else "partially_completed",
                "image_count": images,
                "completed_count": done,
                "failed_count": len(fail),
                "total_duration_ms": 1000,
                "cost_usd": cost * done,
            },
        )
    )
    return out


def encoded(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]
