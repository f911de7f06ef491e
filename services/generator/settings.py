from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen.settings import ServiceSettings
from schemas.topics import Tier
from services.generator.tiers import (
    ALL_TIERS,
    DEFAULT_MIN_SHARE,
    DEFAULT_TIER_WEIGHTS,
    parse_tiers,
    parse_weights,
    with_min_share,
)


class BackendSettings(BaseSettings):
    """`IMAGEGEN_GENERATOR_*`: models held here, their compute price, how tiers share the GPU."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_GENERATOR_", extra="ignore")

    backend: str = Field(default="demo", description="The default provider (jobs naming none).")
    providers: str = Field(
        default="", description='Comma-separated provider names held here, e.g. "demo,diffusers".'
    )
    model: str | None = None
    device: str | None = None
    gpu_price_per_hour: float = Field(default=2.50, ge=0)
    provider: str = Field(
        default="self-hosted", description="Deprecated: RawImage.provider is the provider name."
    )
    tiers: str = Field(
        default=ALL_TIERS,
        description='The tier topics this pod consumes, e.g. "realtime" (one Deployment per tier).',
    )
    tier_weights: str = DEFAULT_TIER_WEIGHTS
    tier_min_share: float = DEFAULT_MIN_SHARE
    cancel_poll_s: float = Field(default=0.5, gt=0)
    batch_max_size: int = Field(
        default=4, ge=1, le=64, description="Most jobs of one model and shape per pipeline call."
    )
    batch_max_wait_ms: float = Field(
        default=50.0, ge=0, description="Longest a job waits for others to batch with."
    )
    hosted_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Hosted (API) images in flight at once; GPU work stays one call at a time.",
    )

    def provider_names(self) -> list[str]:
        """The providers held here, the default one first."""
        names = [self.backend]
        for name in (n.strip() for n in self.providers.split(",")):
            if name and name not in names:
                names.append(name)
        return names

    def tier_list(self) -> list[Tier]:
        """The tiers this pod consumes, in registry order."""
        return parse_tiers(self.tiers)

    @model_validator(mode="after")
    def _valid_tiers(self) -> BackendSettings:
        # Fail at start-up, naming the setting, not at the first poll.
        with_min_share(parse_weights(self.tier_weights), self.tier_min_share)
        parse_tiers(self.tiers)
        return self


class DiffusersSettings(BaseSettings):
    """`IMAGEGEN_GENERATOR_*` options of the self-hosted diffusers backend."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_GENERATOR_", extra="ignore")

    compile: bool = Field(
        default=False, description="torch.compile the UNet/transformer (slow first batch)."
    )
    compile_mode: str = "max-autotune-no-cudagraphs"
    channels_last: bool = Field(default=False, description="channels-last memory format (GPU).")
    ip_adapter: str | None = Field(
        default=None, description="IP-Adapter repo id or local folder; unset: no IP-Adapter."
    )
    ip_adapter_subfolder: str = "models"
    ip_adapter_weight_name: str = "ip-adapter_sd15.safetensors"
    ip_adapter_image_encoder: str = Field(
        default="image_encoder",
        description="Image-encoder folder inside the subfolder, or a path inside the repo.",
    )
    ip_adapter_scale: float = Field(default=0.6, ge=0, le=2)
    reference_strength: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="img2img strength for references when no IP-Adapter is set; 0: ignore them.",
    )
    lora_cache_size: int = Field(
        default=8, ge=1, description="Characters' LoRA files kept loaded across jobs."
    )


class GeneratorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    generator: BackendSettings = Field(default_factory=BackendSettings)
    lora_dir: Path | None = Field(
        default=None, description="Where fetched LoRA files are kept (default: a temp folder)."
    )
    max_attempts: int = 3
    progress_interval_s: float = 0.5
