"""`IMAGEGEN_OPENAI_*`: how the generator reaches OpenAI's images API and what it pays."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OpenAISettings(BaseSettings):
    """Read from the environment; `load()` of the backend checks them, without any network."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_OPENAI_", extra="ignore")

    api_key: SecretStr | None = Field(default=None, description="Required to generate.")
    base_url: str | None = Field(
        default=None, description="An OpenAI-compatible endpoint (…/v1); None: OpenAI's own."
    )
    organization: str | None = None
    model: str = Field(default="gpt-image-1", description="For jobs that name no model.")
    timeout_s: float = Field(default=120.0, gt=0, description="Per HTTP request.")
    max_retries: int = Field(
        default=0, ge=0, description="SDK retries; 0 because the scheduler retries and fails over."
    )
    prices: str = Field(
        default="",
        description='JSON price overrides: {"dall-e-3": {"hd": {"1024x1024": "0.08"}}}.',
    )
    input_fidelity: str | None = Field(
        default="high",
        description="gpt-image-1 edits: how closely to keep the reference faces (high / low).",
    )
