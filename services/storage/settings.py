from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from imagegen.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")
