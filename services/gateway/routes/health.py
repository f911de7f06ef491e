"""Liveness, readiness and the web page."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, status
from fastapi.responses import FileResponse, JSONResponse

from services.gateway.deps import StateDep

router = APIRouter(tags=["ops"])

_INDEX = Path(__file__).resolve().parent.parent / "static" / "index.html"


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.pool.fetchval("SELECT 1"), 2.0)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    checks["consumer"] = "ok" if state.consumer_running else "stopped"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(_INDEX, media_type="text/html")
