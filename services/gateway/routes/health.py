"""Liveness, readiness, metrics and the web page."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, status
from fastapi.responses import FileResponse, JSONResponse, Response

from imagegen.health import (
    NotReadyError,
    Pingable,
    ReadinessCheck,
    broker_check,
    database_check,
    readiness,
)
from imagegen.telemetry import METRICS_CONTENT_TYPE, metrics_exposition
from services.gateway.deps import StateDep

router = APIRouter(tags=["ops"])

_INDEX = Path(__file__).resolve().parent.parent / "static" / "index.html"


@router.get("/healthz")
async def healthz(state: StateDep) -> JSONResponse:
    """200 while the process can do its work; 503 once its events consumer has died."""
    failure = state.consumer_failure
    if failure is not None:
        return JSONResponse(
            {"status": "failed", "reason": failure},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """200 when the database and the broker answer and the events consumer runs; else 503
    naming what is not ready."""

    async def consumer() -> None:
        if not state.consumer_running:
            raise NotReadyError("stopped")

    checks: dict[str, ReadinessCheck] = {"database": database_check(state.pool)}
    if isinstance(state.publisher, Pingable):  # test doubles may not say
        checks["broker"] = broker_check(state.publisher)
    checks["consumer"] = consumer
    ready, verdicts = await readiness(checks, timeout=2.0)
    return JSONResponse(
        {
            "status": "ready" if ready else "not ready",
            "checks": verdicts,
            "not_ready": [name for name, verdict in verdicts.items() if verdict != "ok"],
        },
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus scrape endpoint (the process's metrics, text format)."""
    body = await asyncio.to_thread(metrics_exposition)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(_INDEX, media_type="text/html")
