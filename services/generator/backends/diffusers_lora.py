"""Characters' LoRAs on a diffusers pipeline: loaded once under adapter names, switched per call.

Each distinct LoRA file is loaded once (`load_lora_weights(..., adapter_name=...)`) and
kept across jobs, up to `capacity` files (least recently used unloaded first, never one
the current call needs). Before every pipeline call exactly the call's adapters are made
active with their weights (`set_adapters`); a call without LoRAs disables them all, so a
character's LoRA never leaks into another character's image.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from services.generator.backends.base import InvalidGenerationRequest, LoraWeights

log = logging.getLogger(__name__)


class LoraAdapters:
    """The adapters loaded into one pipeline (shared by its img2img twin)."""

    def __init__(self, pipe: Any, capacity: int = 8) -> None:
        self._pipe = pipe
        self._capacity = max(capacity, 1)
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._enabled = True

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def activate(self, loras: Sequence[LoraWeights]) -> dict[str, float]:
        """Make exactly `loras` active with their weights; what is active, name -> weight."""
        if not loras:
            if self._loaded and self._enabled:
                self._pipe.disable_lora()
                self._enabled = False
            return {}
        if not hasattr(self._pipe, "load_lora_weights"):
            raise InvalidGenerationRequest(
                f"{type(self._pipe).__name__} cannot load LoRA weights; "
                "draw this character with a pipeline that can (SD 1.x, SDXL, FLUX)"
            )
        wanted = {lora.name: lora.weight for lora in loras}
        for lora in loras:
            self._load(lora, keep=set(wanted))
        if not self._enabled:
            self._pipe.enable_lora()
            self._enabled = True
        self._pipe.set_adapters(list(wanted), adapter_weights=list(wanted.values()))
        return wanted

    def _load(self, lora: LoraWeights, keep: set[str]) -> None:
        if lora.name in self._loaded:
            self._loaded.move_to_end(lora.name)
            return
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(lora.path)
            self._pipe.load_lora_weights(state, adapter_name=lora.name)
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            # A half-injected adapter must not linger; nothing injected: nothing to remove.
            with contextlib.suppress(Exception):
                self._pipe.delete_adapters(lora.name)
            raise InvalidGenerationRequest(
                f"LoRA {lora.name} does not fit this model: {str(exc).splitlines()[0][:300]}"
            ) from exc
        self._loaded[lora.name] = None
        log.info("event=lora_loaded adapter=%s loaded=%d", lora.name, len(self._loaded))
        while len(self._loaded) > self._capacity:
            oldest = next((name for name in self._loaded if name not in keep), None)
            if oldest is None:
                break
            self._pipe.delete_adapters(oldest)
            del self._loaded[oldest]
            log.info("event=lora_unloaded adapter=%s", oldest)
