from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from imagegen.errors import ConfigurationError
from imagegen.settings import ServiceSettings


class PostprocessSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    display_quality: int = 95
    display_max_bytes: int = 5 * 1024 * 1024
    thumbnail_size: int = 256
    consistency_enabled: bool = True
    consistency_threshold: float = Field(
        default=0.45,
        ge=0.0,
        le=1.0,
        description="Scores below this flag an image (see services/postprocess/consistency.py).",
    )
    quality_review_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Quality scores below this flag an image for review (formula in"
        " services/postprocess/quality.py); unset: never flagged for quality.",
    )
    postprocess_background_model: Path | None = Field(
        default=None,
        description="TorchScript segmentation model for portrait cut-outs (contract in"
        " services/postprocess/background.py); unset: no background removal.",
    )
    postprocess_background_input_size: int = Field(default=320, ge=32, le=2048)
    safety_check: bool = Field(
        default=True,
        description="Check every generated image with the image-safety classifier before it"
        " is stored (imagegen/safety.py); the service does not start without its model.",
    )
    safety_model_dir: Path | None = Field(
        default=None,
        description="The unpacked nsfwjs package; unset: where scripts/fetch_safety_model.sh"
        " puts it (~/.cache/imagegen).",
    )
    safety_classifier_factory: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description='Tests only (refused with env "prod"): "module:callable" building the'
        " classifier instead of nsfwjs, to drive the refusal path through its interface.",
    )
    safety_threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Unsafe scores above this are refused."
    )
    safety_threshold_children: float = Field(
        default=0.4,
        ge=0.0,
        le=1.0,
        description='The stricter threshold for images whose audience is "children".',
    )
    postprocess_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Images processed at once (consumer lanes); renditions and scoring run"
        " in threads, so about one per core the pod has.",
    )

    @model_validator(mode="after")
    def _no_test_classifier_in_prod(self) -> PostprocessSettings:
        if self.env == "prod" and self.safety_classifier_factory is not None:
            raise ConfigurationError(
                "IMAGEGEN_SAFETY_CLASSIFIER_FACTORY is for tests; production runs nsfwjs"
            )
        return self
