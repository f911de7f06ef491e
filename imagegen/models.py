"""`imagegen models download`: fetch the configured models into the Hugging Face cache ahead.

Generator pods load weights with the hub offline (`HF_HUB_OFFLINE=1`, `local_files_only`),
so an operator runs this where there is network - on the pod's volume, or while building
its image - before the generator starts. Local paths are reported, never fetched.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from imagegen.errors import ConfigurationError

# Pipelines load from the component folders; single-file checkpoints at a repo's root
# (and other frameworks' weights) would only double the download.
PIPELINE_FILES = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"]


class ModelDownloadError(ConfigurationError):
    """A model could not be fetched (no network, unknown id, no access)."""


@dataclass(frozen=True)
class Wanted:
    """One thing to have in the cache: a repo (or local folder) and which of its files."""

    source: str
    patterns: list[str] | None = None


def configured_models() -> list[Wanted]:
    """What `IMAGEGEN_GENERATOR_MODEL` and the IP-Adapter settings name."""
    from services.generator.settings import BackendSettings, DiffusersSettings

    model = BackendSettings().model
    options = DiffusersSettings()
    wanted = [Wanted(model, PIPELINE_FILES)] if model else []
    if options.ip_adapter:
        folder = options.ip_adapter_subfolder
        encoder = options.ip_adapter_image_encoder
        encoder_dir = f"{folder}/{encoder}" if "/" not in encoder else encoder
        weight = options.ip_adapter_weight_name
        weights = f"{folder}/{weight}" if folder else weight
        wanted.append(Wanted(options.ip_adapter, [weights, f"{encoder_dir}/*"]))
    return wanted


def download(wanted: Wanted) -> str:
    """Have `wanted` in the local cache; a line saying where it is."""
    if Path(wanted.source).exists():
        return f"{wanted.source}: local path, already present"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelDownloadError(
            f"{wanted.source}: HF_HUB_OFFLINE is set; unset it to download from the hub"
        )
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(wanted.source, allow_patterns=wanted.patterns)
    except Exception as exc:  # network, auth, unknown repo: all end the same way here
        raise ModelDownloadError(f"{wanted.source}: cannot download ({_reason(exc)})") from exc
    return f"{wanted.source}: downloaded to {path}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_download(models: list[str] | None) -> int:
    """The command: one line per model on stdout; a one-line error and exit code 2 on failure."""
    wanted = [Wanted(m, PIPELINE_FILES) for m in models] if models else configured_models()
    if not wanted:
        print(
            "error: no model configured; set IMAGEGEN_GENERATOR_MODEL or pass --model ID",
            file=sys.stderr,
        )
        return 2
    for item in wanted:
        try:
            print(download(item))
        except ModelDownloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0
