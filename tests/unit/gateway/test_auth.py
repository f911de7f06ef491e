from __future__ import annotations

import jwt
import pytest

from imagegen.errors import ConfigurationError
from imagegen.settings import DEV_JWT_SECRET
from schemas.requests import UserTier
from services.gateway.auth import InvalidTokenError, issue_token, verify_token
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.conftest import Gateway

SECRET = "a-test-secret-that-is-32-bytes-or-more"


def test_issued_token_round_trips() -> None:
    token = issue_token(SECRET, "alice", "free", 60)
    principal = verify_token(SECRET, token)
    assert (principal.user_id, principal.tier) == ("alice", UserTier.FREE)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (issue_token(SECRET, "alice", "paid", -30), "expired"),
        (
            issue_token("another-secret-entirely-of-32-bytes-or-so", "alice", "paid", 3600),
            "signature",
        ),
        ("not-a-jwt", "invalid"),
        (jwt.encode({"sub": "alice", "tier": "gold", "exp": 2**40}, SECRET), "tier"),
        (issue_token(SECRET, "alice", "paid", 3600, scope="stream"), "stream tokens"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: str, message: str) -> None:
    with pytest.raises(InvalidTokenError, match=message):
        verify_token(SECRET, token)


def test_dev_secret_is_refused_outside_dev() -> None:
    with pytest.raises(ConfigurationError, match="JWT_SECRET"):
        GatewaySettings(env="prod", s3={"secret_key": "real-s3-secret"})
    settings = GatewaySettings(env="prod", jwt_secret=SECRET, s3={"secret_key": "real"})
    assert settings.jwt_secret.get_secret_value() == SECRET
    assert GatewaySettings(env="test").jwt_secret.get_secret_value() == DEV_JWT_SECRET


async def test_missing_token_is_401(gateway: Gateway) -> None:
    response = await gateway.client.get("/api/v1/characters")
    assert response.status_code == 401
    assert "missing bearer token" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_expired_token_is_401(gateway: Gateway) -> None:
    token = issue_token(gateway.settings.jwt_secret, "bob", "paid", -5)
    response = await gateway.client.get(
        "/api/v1/characters", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["detail"] == "token expired"


async def test_wrongly_signed_token_is_401(gateway: Gateway) -> None:
    token = issue_token("someone-elses-secret-value-at-least-32b", "bob", "paid", 60)
    response = await gateway.client.get(
        "/api/v1/characters", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]


async def test_stream_token_is_refused_as_bearer(gateway: Gateway, user: str) -> None:
    response = await gateway.client.post("/api/v1/stream-tokens", headers=gateway.auth(user))
    assert response.status_code == 200
    body = response.json()
    assert body["expiresIn"] == gateway.settings.stream_token_ttl_s
    response = await gateway.client.get(
        "/api/v1/characters", headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert response.status_code == 401
    assert "stream_token" in response.json()["detail"]


async def test_access_token_is_refused_as_stream_token(gateway: Gateway, user: str) -> None:
    job_id = await gateway.generate(user, 1)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job_id}/events", params={"stream_token": gateway.token(user)}
    )
    assert response.status_code == 401
