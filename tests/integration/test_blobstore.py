"""One behaviour suite for the claim-check blob store, on the fake and on real SeaweedFS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from imagegen.blobstore import (
    BlobIntegrityError,
    BlobStore,
    InMemoryBlobStore,
    S3BlobStore,
    get_verified,
    put_staging,
)
from imagegen.errors import NotFoundError
from imagegen.settings import S3Settings
from tests.fixtures.servers import S3Info


@pytest.fixture(params=["memory", "s3"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BlobStore]:
    if request.param == "memory":
        yield InMemoryBlobStore()
        return
    s3: S3Info = request.getfixturevalue("seaweed")
    settings = S3Settings(
        endpoint=s3.endpoint,
        bucket=s3.bucket,
        region=s3.region,
        access_key=SecretStr(s3.access_key),
        secret_key=SecretStr(s3.secret_key),
    )
    async with S3BlobStore(settings) as real:
        yield real


async def test_staging_is_content_addressed_and_verified(store: BlobStore) -> None:
    data = f"png bytes {uuid.uuid4()}".encode()
    ref = await put_staging(store, data, "image/png")
    again = await put_staging(store, data, "image/png")
    assert ref == again and ref.key.startswith("staging/") and ref.key.endswith(".png")
    assert ref.size == len(data)
    assert await get_verified(store, ref) == data


async def test_tampered_object_fails_verification(store: BlobStore) -> None:
    ref = await put_staging(store, b"original", "image/png")
    await store.put(ref.key, b"tampered", "image/png")
    with pytest.raises(BlobIntegrityError):
        await get_verified(store, ref)


async def test_missing_key_is_not_found(store: BlobStore) -> None:
    with pytest.raises(NotFoundError):
        await store.get(f"staging/none/{uuid.uuid4()}.png")
    assert not await store.exists(f"staging/none/{uuid.uuid4()}.png")


async def test_copy_list_delete(store: BlobStore) -> None:
    prefix = f"users/{uuid.uuid4().hex}/"
    ref = await put_staging(store, b"x" * 10, "image/jpeg")
    await store.copy(ref.key, prefix + "a.jpg")
    await store.copy(ref.key, prefix + "a.jpg")  # idempotent
    await store.put(prefix + "b.jpg", b"y", "image/jpeg")
    assert await store.list(prefix) == [prefix + "a.jpg", prefix + "b.jpg"]
    await store.delete([prefix + "a.jpg", prefix + "missing.jpg"])
    assert await store.list(prefix) == [prefix + "b.jpg"]


async def test_presigned_url_reads_and_refuses_tampering(seaweed: S3Info) -> None:
    settings = S3Settings(
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        region=seaweed.region,
        access_key=SecretStr(seaweed.access_key),
        secret_key=SecretStr(seaweed.secret_key),
    )
    async with S3BlobStore(settings) as real, httpx.AsyncClient() as http:
        ref = await put_staging(real, b"signed bytes", "image/png")
        url = await real.presign_get(ref.key, 3600)
        assert (await http.get(url)).content == b"signed bytes"
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await http.get(tampered)).status_code == 403
        other_key = url.replace(ref.key.split("/")[-1], "other.png")
        assert (await http.get(other_key)).status_code == 403
