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


# --- JWKS (RS256 from an identity provider) -------------------------------------------------

import json  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from typing import Any  # noqa: E402

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402

from tests.unit.gateway.resources_support import custom_gateway  # noqa: E402


class JwksServer:
    """Serves a freshly generated RSA key's JWKS on a free loopback port."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
        body = json.dumps({"keys": [jwk]}).encode()
        self.hits = 0
        self.subject = f"idp-{id(self)}-{threading.get_ident()}"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def token(self, kid: str = "k1", key: Any = None, **claims: Any) -> str:
        now = datetime.now(UTC)
        payload = {
            "sub": self.subject,
            "tier": "paid",
            "exp": now + timedelta(minutes=5),
            "aud": "imagegen",
            **claims,
        }
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


async def test_rs256_tokens_from_a_jwks_url(gateway_db_url: str, jwks: JwksServer) -> None:
    async with custom_gateway(gateway_db_url, jwks_url=jwks.url, jwt_audience="imagegen") as gw:

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        ok = await gw.client.get("/api/v1/characters", headers=bearer(jwks.token()))
        assert ok.status_code == 200, ok.text
        created = await gw.client.post(
            "/api/v1/characters", json={"name": "Mia"}, headers=bearer(jwks.token())
        )
        assert created.status_code == 201
        # The same user through an HS256 dev token sees the same character.
        mine = await gw.client.get("/api/v1/characters", headers=gw.auth(jwks.subject))
        assert [c["id"] for c in mine.json()["items"]] == [created.json()["id"]]
        assert jwks.hits == 1  # the key set is cached

        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cases = [
            (jwks.token(key=other_key), "signature"),
            (jwks.token(kid="unknown"), "JWKS"),
            (jwks.token(aud="someone-else"), "Audience"),
            (jwks.token(tier="gold"), "tier"),
            (jwks.token(exp=datetime.now(UTC) - timedelta(minutes=1)), "expired"),
        ]
        for token, words in cases:
            response = await gw.client.get("/api/v1/characters", headers=bearer(token))
            assert response.status_code == 401, words
            assert words in response.json()["detail"], response.json()


async def test_rs256_is_refused_without_a_jwks_url(gateway: Gateway, jwks: JwksServer) -> None:
    response = await gateway.client.get(
        "/api/v1/characters", headers={"Authorization": f"Bearer {jwks.token()}"}
    )
    assert response.status_code == 401
    assert "RS256" in response.json()["detail"]


async def test_unreachable_jwks_is_401_not_500(gateway_db_url: str, jwks: JwksServer) -> None:
    url = jwks.url
    jwks.server.shutdown()
    jwks.server.server_close()
    async with custom_gateway(gateway_db_url, jwks_url=url) as gw:
        response = await gw.client.get(
            "/api/v1/characters", headers={"Authorization": f"Bearer {jwks.token()}"}
        )
        assert response.status_code == 401
        assert "JWKS" in response.json()["detail"]
