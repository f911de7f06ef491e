from __future__ import annotations

import asyncio
from typing import Any

from imagegen.errors import RetryableError
from imagegen.kafka import Publisher
from services.gateway.idempotency import request_hash
from tests.unit.gateway.conftest import Gateway
from tests.unit.gateway.resources_support import custom_gateway, published


async def _count(gateway: Gateway, user: str) -> int:
    count: int = await gateway.state.pool.fetchval(
        "SELECT count(*) FROM characters WHERE user_id = $1", user
    )
    return count


def _headers(gateway: Gateway, user: str, key: str) -> dict[str, str]:
    return {**gateway.auth(user), "Idempotency-Key": key}


async def test_same_key_and_body_replays_the_first_response(gateway: Gateway, user: str) -> None:
    headers = _headers(gateway, user, "key-1")
    first = await gateway.client.post("/api/v1/characters", json={"name": "Mia"}, headers=headers)
    assert first.status_code == 201
    # Same JSON, different spelling: still the same request.
    second = await gateway.client.post(
        "/api/v1/characters",
        content=b'{ "name" :  "Mia" }',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await _count(gateway, user) == 1


async def test_same_key_with_a_different_body_is_refused_naming_the_header(
    gateway: Gateway, user: str
) -> None:
    headers = _headers(gateway, user, "key-2")
    await gateway.client.post("/api/v1/characters", json={"name": "Mia"}, headers=headers)
    response = await gateway.client.post(
        "/api/v1/characters", json={"name": "Leo"}, headers=headers
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # ... also on another endpoint.
    response = await gateway.client.post("/api/v1/stories", json={"name": "Mia"}, headers=headers)
    assert response.status_code == 422
    assert await _count(gateway, user) == 1


async def test_keys_are_scoped_per_user(gateway: Gateway, user: str) -> None:
    other = "other-" + user
    a = await gateway.client.post(
        "/api/v1/characters", json={"name": "Mia"}, headers=_headers(gateway, user, "shared")
    )
    b = await gateway.client.post(
        "/api/v1/characters", json={"name": "Mia"}, headers=_headers(gateway, other, "shared")
    )
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers


async def test_concurrent_duplicates_have_exactly_one_effect(gateway: Gateway, user: str) -> None:
    headers = _headers(gateway, user, "burst")
    responses = await asyncio.gather(
        *[
            gateway.client.post("/api/v1/characters", json={"name": "Mia"}, headers=headers)
            for _ in range(8)
        ]
    )
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {201, 409}
    assert codes.count(201) >= 1
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
    for r in responses:
        if r.status_code == 409:
            assert r.headers["retry-after"] == "1"
            assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await _count(gateway, user) == 1


async def test_expired_keys_do_the_work_again(gateway: Gateway, user: str) -> None:
    headers = _headers(gateway, user, "old")
    first = await gateway.client.post("/api/v1/characters", json={"name": "Mia"}, headers=headers)
    await gateway.state.pool.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE user_id = $1",
        user,
    )
    second = await gateway.client.post("/api/v1/characters", json={"name": "Mia"}, headers=headers)
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert await _count(gateway, user) == 2


async def test_a_bad_key_is_refused(gateway: Gateway, user: str) -> None:
    for key in ["has space", "x" * 256]:
        response = await gateway.client.post(
            "/api/v1/characters", json={"name": "Mia"}, headers=_headers(gateway, user, key)
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await _count(gateway, user) == 0


async def test_validation_errors_are_kept_but_retryable_failures_are_not(
    gateway_db_url: str, user: str
) -> None:
    class FlakyPublisher:
        def __init__(self, inner: Publisher) -> None:
            self.inner, self.fail = inner, True

        async def publish(self, topic: str, key: Any, message: Any, **kw: Any) -> None:
            if self.fail:
                raise RetryableError("broker down")
            await self.inner.publish(topic, key, message, **kw)

        async def close(self) -> None:
            return None

    from imagegen.kafka.memory import InMemoryBroker

    broker = InMemoryBroker()
    flaky = FlakyPublisher(broker.publisher())
    async with custom_gateway(gateway_db_url, broker=broker, publisher=flaky) as gw:  # type: ignore[arg-type]
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-set"
        headers = _headers(gw, user, "ref-1")
        failed = await gw.client.post(path, headers=headers)
        assert failed.status_code == 503
        flaky.fail = False
        retried = await gw.client.post(path, headers=headers)
        assert retried.status_code == 202, retried.text
        replayed = await gw.client.post(path, headers=headers)
        assert replayed.json() == retried.json()
        assert len(published(gw)) == 1

        bad = _headers(gw, user, "bad-1")
        first = await gw.client.post("/api/v1/characters", json={"name": ""}, headers=bad)
        again = await gw.client.post("/api/v1/characters", json={"name": ""}, headers=bad)
        assert first.status_code == again.status_code == 422
        assert again.headers["idempotent-replayed"] == "true"


def test_multipart_boundaries_do_not_change_the_hash() -> None:
    def body(boundary: str) -> bytes:
        return (
            f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; filename="a"\r\n'
            f"\r\nDATA\r\n--{boundary}--\r\n"
        ).encode()

    a = request_hash("POST", "/p", b"", "multipart/form-data; boundary=aaa111", body("aaa111"))
    b = request_hash("POST", "/p", b"", "multipart/form-data; boundary=bbb222", body("bbb222"))
    c = request_hash("POST", "/p", b"", "multipart/form-data; boundary=ccc", body("ccc") + b"x")
    assert a == b != c
