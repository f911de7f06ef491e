"""Cross-cutting pieces the app factory installs: token verification, moderation and the
idempotency middleware. Nothing here does I/O; the moderator is closed by the lifespan."""

from __future__ import annotations

from fastapi import FastAPI

from services.gateway.auth import Authenticator
from services.gateway.idempotency import IdempotencyMiddleware
from services.gateway.moderation import Moderator, build_moderator
from services.gateway.settings import GatewaySettings


def install(app: FastAPI, settings: GatewaySettings, moderator: Moderator | None = None) -> None:
    """Attach the authenticator and moderator to `app.state`, add the middleware."""
    app.state.authenticator = Authenticator(settings)
    app.state.moderator = moderator or build_moderator(settings)
    app.add_middleware(IdempotencyMiddleware)
