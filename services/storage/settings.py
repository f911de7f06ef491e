from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    storage_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Processed images stored at once (consumer lanes): each waits on S3"
        " copies and one database transaction.",
    )
    retain_deleted_stories: bool = Field(
        default=False,
        description="Production (with `imagegen storage lifecycle apply`): a deleted story's"
        " objects are tagged and kept a year, then the bucket's lifecycle rule expires them"
        " and clean-up removes their rows; the API answers 404 for them at once. False:"
        " they are removed at once (a bucket without that rule, the local stack).",
    )
