from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from imagegen.settings import ServiceSettings


class PostprocessSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    display_quality: int = 95
    display_max_bytes: int = 5 * 1024 * 1024
    thumbnail_size: int = 256
