"""Small synchronous S3 helpers for start-up (the services use aioboto3 themselves)."""

from __future__ import annotations

from typing import Any

from imagegen.stack import StackError


def s3_client(endpoint: str, key: str, secret: str, region: str) -> Any:
    """A boto3 S3 client with short timeouts: start-up code polls, it should not hang."""
    # Imported here: boto3 takes ~0.3 s to import and only start-up needs it.
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=region,
        config=Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )


def ensure_bucket(endpoint: str, bucket: str, key: str, secret: str, region: str) -> None:
    """Create `bucket` unless it exists; idempotent."""
    from botocore.exceptions import ClientError

    client = s3_client(endpoint, key, secret, region)
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as err:
        status = _status(err)
        if status >= 500:
            raise  # the server is still starting: callers may retry
        if status != 404:
            raise StackError(f"cannot reach bucket {bucket!r} at {endpoint}: {err}") from err
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":  # S3 refuses an explicit us-east-1 location constraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code")
        if _status(err) >= 500:
            raise
        if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise StackError(f"cannot create bucket {bucket!r} at {endpoint}: {err}") from err


def expire_staging(
    endpoint: str, bucket: str, key: str, secret: str, region: str, *, days: int = 1
) -> None:
    """A lifecycle rule that expires staged (claim-check) objects; finished images live
    under their final keys, so nothing finished depends on staging."""
    client = s3_client(endpoint, key, secret, region)
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "expire-staging",
                    "Filter": {"Prefix": "staging/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": days},
                }
            ]
        },
    )


def _status(err: Any) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
