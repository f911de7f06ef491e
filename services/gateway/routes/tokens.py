"""`/api/v1/stream-tokens`: short-lived tokens for EventSource, which cannot send headers."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.auth import STREAM_SCOPE, CurrentUser, issue_token
from services.gateway.deps import SettingsDep
from services.gateway.models import StreamToken
from services.gateway.problems import responses

router = APIRouter(prefix="/api/v1/stream-tokens", tags=["auth"])


@router.post("", response_model=StreamToken, responses=responses(401, 429))
async def create_stream_token(user: CurrentUser, settings: SettingsDep) -> StreamToken:
    ttl = settings.stream_token_ttl_s
    token = issue_token(settings.jwt_secret, user.user_id, user.tier, ttl, scope=STREAM_SCOPE)
    return StreamToken(token=token, expires_in=ttl)
