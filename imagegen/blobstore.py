"""The claim-check blob store: bytes go to object storage, messages carry key, size and sha256."""

from __future__ import annotations

import builtins
import hashlib
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import aioboto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from imagegen.errors import NotFoundError, PermanentError, RetryableError
from imagegen.settings import S3Settings
from schemas.images import BlobRef

STAGING_PREFIX = "staging/"
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def staging_key(sha256: str, content_type: str) -> str:
    """Content-addressed: the same bytes always land under the same key."""
    ext = _EXTENSIONS.get(content_type, "bin")
    return f"{STAGING_PREFIX}{sha256[:2]}/{sha256}.{ext}"


def blob_ref(data: bytes, content_type: str) -> BlobRef:
    digest = hashlib.sha256(data).hexdigest()
    return BlobRef(
        key=staging_key(digest, content_type),
        size=len(data),
        sha256=digest,
        content_type=content_type,
    )


class BlobIntegrityError(PermanentError):
    """The bytes under a key are not the bytes the message promised."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


class BlobStore(Protocol):
    """Object storage as the services need it."""

    async def put(
        self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None
    ) -> None:
        """Write bytes under a key (overwrites), with a Cache-Control header when given."""
        ...

    async def get(self, key: str) -> bytes:
        """Read the bytes under a key; NotFoundError when there are none."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether the key holds an object."""
        ...

    async def copy(
        self,
        source: str,
        dest: str,
        *,
        content_type: str | None = None,
        cache_control: str | None = None,
    ) -> None:
        """Server-side copy; with `cache_control`, the copy gets it (and `content_type`)."""
        ...

    async def tag(self, keys: list[str], tags: dict[str, str]) -> None:
        """Set these tags on each key and restart its age (an in-place copy), so an
        age-based lifecycle rule filtered on them counts from now."""
        ...

    async def tags(self, key: str) -> dict[str, str]:
        """The object's tags."""
        ...

    async def delete(self, keys: list[str]) -> None:
        """Remove keys; absent keys are fine."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every key under a prefix."""
        ...

    async def list_info(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Keys under `prefix` with their size and last-modified time."""
        ...

    async def presign_get(self, key: str, expires_in: int) -> str:
        """A URL that reads the object without credentials until it expires."""
        ...


async def put_staging(store: BlobStore, data: bytes, content_type: str) -> BlobRef:
    """Stage bytes under their content address (idempotent) and return the claim check."""
    ref = blob_ref(data, content_type)
    await store.put(ref.key, data, content_type)
    return ref


async def get_verified(store: BlobStore, ref: BlobRef) -> bytes:
    """Fetch a claim check's bytes and check they are the promised ones."""
    data = await store.get(ref.key)
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise BlobIntegrityError(f"object {ref.key} does not match its sha256/size")
    return data


def _s3_error(exc: Exception, key: str) -> Exception:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return NotFoundError(f"no object at {key}")
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}:
            return PermanentError(f"s3 refused {key}: {code}")
    return RetryableError(f"s3 unavailable for {key}: {exc}")


class S3BlobStore:
    """aioboto3 implementation; open it with `async with`."""

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._bucket = settings.bucket
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._signer: Any = None

    def _client_kwargs(self, endpoint: str | None) -> dict[str, Any]:
        return {
            "endpoint_url": endpoint,
            "region_name": self._settings.region,
            "aws_access_key_id": self._settings.access_key.get_secret_value(),
            "aws_secret_access_key": self._settings.secret_key.get_secret_value(),
            "config": Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                # No CRC32 trailer on every PUT nor its check on every GET (botocore's
                # default since 1.36): the sha256 in the claim check and the signed payload
                # hash already cover the bytes; the extra checksum is CPU on every request.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        }

    async def __aenter__(self) -> S3BlobStore:
        session = aioboto3.Session()
        self._client = await self._stack.enter_async_context(
            session.client("s3", **self._client_kwargs(self._settings.endpoint))
        )
        public = self._settings.public_endpoint
        self._signer = (
            await self._stack.enter_async_context(
                session.client("s3", **self._client_kwargs(public))
            )
            if public and public != self._settings.endpoint
            else self._client
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def put(
        self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None
    ) -> None:
        extra = {"CacheControl": cache_control} if cache_control is not None else {}
        try:
            await self._client.put_object(
                Bucket=self._bucket, Key=key, Body=data, ContentType=content_type, **extra
            )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, key) from exc

    async def get(self, key: str) -> bytes:
        try:
            response = await self._client.get_object(Bucket=self._bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, key) from exc

    async def exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self._bucket, Key=key)
            return True
        except ClientError as exc:
            if isinstance(_s3_error(exc, key), NotFoundError):
                return False
            raise _s3_error(exc, key) from exc
        except BotoCoreError as exc:
            raise _s3_error(exc, key) from exc

    async def copy(
        self,
        source: str,
        dest: str,
        *,
        content_type: str | None = None,
        cache_control: str | None = None,
    ) -> None:
        extra: dict[str, str] = {}
        if cache_control is not None:
            # New metadata means REPLACE, which drops the source's Content-Type: set it again.
            extra = {"MetadataDirective": "REPLACE", "CacheControl": cache_control}
            if content_type is not None:
                extra["ContentType"] = content_type
        try:
            await self._client.copy_object(
                Bucket=self._bucket,
                Key=dest,
                CopySource={"Bucket": self._bucket, "Key": source},
                **extra,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, source) from exc

    async def tag(self, keys: list[str], tags: dict[str, str]) -> None:
        tagging = urlencode(sorted(tags.items()))
        for key in keys:
            try:
                head = await self._client.head_object(Bucket=self._bucket, Key=key)
                extra = {"CacheControl": head["CacheControl"]} if "CacheControl" in head else {}
                # S3 refuses a copy onto itself that changes nothing: the metadata is
                # replaced (by the same values) along with the tags.
                await self._client.copy_object(
                    Bucket=self._bucket,
                    Key=key,
                    CopySource={"Bucket": self._bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    ContentType=head.get("ContentType", "application/octet-stream"),
                    Metadata=head.get("Metadata", {}),
                    TaggingDirective="REPLACE",
                    Tagging=tagging,
                    **extra,
                )
            except (ClientError, BotoCoreError) as exc:
                raise _s3_error(exc, key) from exc

    async def tags(self, key: str) -> dict[str, str]:
        try:
            response = await self._client.get_object_tagging(Bucket=self._bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, key) from exc
        return {t["Key"]: t["Value"] for t in response.get("TagSet", [])}

    async def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            try:
                await self._client.delete_objects(
                    Bucket=self._bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            except (ClientError, BotoCoreError) as exc:
                raise _s3_error(exc, chunk[0]) from exc

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, prefix) from exc
        return keys

    async def list_info(self, prefix: str) -> builtins.list[ObjectInfo]:
        found: builtins.list[ObjectInfo] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                found.extend(
                    ObjectInfo(obj["Key"], obj["Size"], obj["LastModified"])
                    for obj in page.get("Contents", [])
                )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, prefix) from exc
        return found

    async def presign_get(self, key: str, expires_in: int) -> str:
        url: str = await self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_in
        )
        return url


class InMemoryBlobStore:
    """The fake: same interface, a dict behind it; presigned URLs are opaque tokens."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.modified: dict[str, datetime] = {}
        self.cache_control: dict[str, str] = {}
        self.object_tags: dict[str, dict[str, str]] = {}

    async def put(
        self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None
    ) -> None:
        self.objects[key] = (data, content_type)
        self.modified[key] = datetime.now(UTC)
        if cache_control is not None:
            self.cache_control[key] = cache_control
        else:
            self.cache_control.pop(key, None)

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key][0]
        except KeyError:
            raise NotFoundError(f"no object at {key}") from None

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def copy(
        self,
        source: str,
        dest: str,
        *,
        content_type: str | None = None,
        cache_control: str | None = None,
    ) -> None:
        data, source_type = self.objects[source]
        self.objects[dest] = (data, content_type or source_type)
        self.modified[dest] = datetime.now(UTC)
        if cache_control is not None:
            self.cache_control[dest] = cache_control

    async def tag(self, keys: list[str], tags: dict[str, str]) -> None:
        for key in keys:
            if key not in self.objects:
                raise NotFoundError(f"no object at {key}")
            self.object_tags[key] = dict(tags)
            self.modified[key] = datetime.now(UTC)

    async def tags(self, key: str) -> dict[str, str]:
        if key not in self.objects:
            raise NotFoundError(f"no object at {key}")
        return dict(self.object_tags.get(key, {}))

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)
            self.modified.pop(key, None)
            self.cache_control.pop(key, None)
            self.object_tags.pop(key, None)

    async def list_info(self, prefix: str) -> builtins.list[ObjectInfo]:
        return [
            ObjectInfo(k, len(self.objects[k][0]), self.modified.get(k, datetime.now(UTC)))
            for k in sorted(self.objects)
            if k.startswith(prefix)
        ]

    async def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def presign_get(self, key: str, expires_in: int) -> str:
        return f"memory://{key}?expires_in={expires_in}"
