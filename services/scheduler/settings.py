from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from imagegen.settings import ServiceSettings


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    default_steps: int = 20
    default_guidance: float = 7.0
    max_attempts: int = 3
