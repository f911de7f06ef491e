"""The bucket's lifecycle rules, declared once (`imagegen storage lifecycle apply`).

| rule | objects | action |
|---|---|---|
| expire-staging | `staging/` (claim-check bytes) | expire after 1 day |
| final-to-intelligent-tiering | `users/` (final images) | Intelligent-Tiering after 30 days |
| expire-deleted-stories | `users/`, tag `imagegen-deleted=story` | expire after 365 days |

Expiration counts from an object's creation: a deleted story's objects are tagged with
an in-place copy (BlobStore.tag), which restarts their age, so they expire a year after
the deletion; clean-up removes their rows after the same year.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from imagegen.blobstore import STAGING_PREFIX
from services.storage.cleanup import FINAL_PREFIX
from services.storage.owners import DELETED_TAG

STAGING_EXPIRY_DAYS = 1
TIERING_AFTER_DAYS = 30
DELETED_STORY_DAYS = 365
DELETED_STORY_RETENTION = timedelta(days=DELETED_STORY_DAYS)


@dataclass(frozen=True)
class Rule:
    id: str
    prefix: str
    tag: tuple[str, str] | None = None
    expire_days: int | None = None
    transition: tuple[int, str] | None = None
    abort_multipart_days: int | None = None

    @property
    def needs(self) -> str:
        """The S3 feature a server must implement for this rule."""
        if self.transition is not None:
            return f"transition to {self.transition[1]}"
        return "tag-filtered expiration" if self.tag else "prefix expiration"

    def document(self) -> dict[str, Any]:
        """The rule as PutBucketLifecycleConfiguration takes it."""
        if self.tag is None:
            flt: dict[str, Any] = {"Prefix": self.prefix}
        else:
            key, value = self.tag
            flt = {"And": {"Prefix": self.prefix, "Tags": [{"Key": key, "Value": value}]}}
        rule: dict[str, Any] = {"ID": self.id, "Filter": flt, "Status": "Enabled"}
        if self.expire_days is not None:
            rule["Expiration"] = {"Days": self.expire_days}
        if self.transition is not None:
            days, storage_class = self.transition
            rule["Transitions"] = [{"Days": days, "StorageClass": storage_class}]
        if self.abort_multipart_days is not None:
            rule["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": self.abort_multipart_days
            }
        return rule


RULES: tuple[Rule, ...] = (
    Rule(
        "expire-staging",
        STAGING_PREFIX,
        expire_days=STAGING_EXPIRY_DAYS,
        abort_multipart_days=STAGING_EXPIRY_DAYS,
    ),
    Rule(
        "final-to-intelligent-tiering",
        FINAL_PREFIX,
        transition=(TIERING_AFTER_DAYS, "INTELLIGENT_TIERING"),
    ),
    Rule("expire-deleted-stories", FINAL_PREFIX, tag=DELETED_TAG, expire_days=DELETED_STORY_DAYS),
)


def configuration(skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The LifecycleConfiguration of every rule but those in `skip`."""
    unknown = skip - {r.id for r in RULES}
    if unknown:
        raise ValueError(f"no lifecycle rule {sorted(unknown)}; rules: {[r.id for r in RULES]}")
    return {"Rules": [r.document() for r in RULES if r.id not in skip]}


def missing(applied: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Ids of wanted rules the bucket does not hold as declared (read back after a put)."""
    held = {r.get("ID"): r for r in applied.get("Rules", [])}
    return [
        r["ID"]
        for r in wanted["Rules"]
        if r["ID"] not in held or any(held[r["ID"]].get(k) != v for k, v in r.items())
    ]
