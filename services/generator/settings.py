from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen.settings import ServiceSettings


class BackendSettings(BaseSettings):
    """`IMAGEGEN_GENERATOR_*`: which model runs here and what its compute costs."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_GENERATOR_", extra="ignore")

    backend: str = "demo"
    model: str | None = None
    device: str | None = None
    gpu_price_per_hour: float = 2.50
    provider: str = "self-hosted"


class GeneratorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    generator: BackendSettings = Field(default_factory=BackendSettings)
    max_attempts: int = 3
    progress_interval_s: float = 0.5
