"""The generator's model-backend port: requests in, PNG bytes out, progress and cancel.

Backends are blocking (torch); the worker runs `generate` in a thread and talks to it
only through the progress callback and the cancel token.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from imagegen.errors import ConfigurationError, PermanentError

ProgressCallback = Callable[[int, int], None]
"""(step, total_steps), 1-based; called from the thread that runs `generate`."""


@dataclass(frozen=True)
class Region:
    """One character's part of a multi-character image and the references that steer it."""

    character_id: str
    name: str
    box: tuple[float, float, float, float]
    """(x0, y0, x1, y1) in fractions of the image, y down."""
    reference_images: tuple[bytes, ...] = ()

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels of a `width` x `height` image."""
        x0, y0, x1, y1 = self.box
        return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)

    @property
    def placement(self) -> str:
        """Where the region lies, in words a prompt can carry ("on the left", ...)."""
        return placement(self.box)


def placement(box: tuple[float, float, float, float]) -> str:
    """Where a box (x0, y0, x1, y1 in fractions, y down) lies, in a prompt's words."""
    x0, y0, x1, y1 = box
    middle_x, middle_y = (x0 + x1) / 2, (y0 + y1) / 2
    across = "left" if middle_x < 0.4 else "right" if middle_x > 0.6 else "centre"
    if y1 - y0 > 0.75:
        return "in the centre" if across == "centre" else f"on the {across}"
    down = "top" if middle_y < 0.5 else "bottom"
    return f"at the {down}" if across == "centre" else f"at the {down} {across}"


@dataclass(frozen=True)
class LoraWeights:
    """A character's LoRA as the backend loads it: a safetensors file on local disk."""

    name: str
    """Adapter name; one per distinct file (its sha256), so equal files load once."""
    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """One image to make. `identity_seed` is the character's locked seed."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    identity_seed: int
    reference_images: tuple[bytes, ...] = ()
    img2img_strength: float | None = None
    model: str | None = None
    """The model the job names; None means the backend's configured one."""
    quality: str = "standard"
    """The job's quality tier (draft / standard / high); API backends map it to theirs."""
    request_id: str = ""
    """Unique per attempt (image id + attempt): an idempotency key for hosted providers."""
    regions: tuple[Region, ...] = ()
    """Multi-character images: each character's region and own references (empty: one
    character, `reference_images` steer the whole image)."""
    loras: tuple[LoraWeights, ...] = ()
    """The LoRAs of the image's characters, each with its weight."""

    @property
    def has_references(self) -> bool:
        return bool(self.reference_images) or any(r.reference_images for r in self.regions)


@dataclass(frozen=True)
class GeneratedImage:
    """A finished image and everything needed to record how it was made."""

    png: bytes
    width: int
    height: int
    backend: str
    model: str
    device: str
    versions: dict[str, str] = field(hash=False)
    demo: bool
    steps_run: int
    seconds: float
    cost_usd: float | None = None
    """What the provider charged for this image; None: price the busy seconds (`cost_usd`)."""
    conditioning: str = ""
    """How the references steered it: "", "ip_adapter", "img2img" or "edit"."""
    conditioning_strength: float | None = None
    quality: str = ""
    """The provider's own quality/size setting, when it has one."""
    batch_size: int = 1
    loras: dict[str, float] = field(default_factory=dict, hash=False)
    """LoRA adapters active for this image: name -> weight."""


class CancelToken:
    """A thread-safe, set-once flag the worker sets and the backend polls between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class GenerationCancelled(PermanentError):
    """Generation stopped because its job was cancelled; retrying would be wrong."""


class ModelNotFoundError(ConfigurationError):
    """The configured model is neither a local path nor in the local model cache."""

    def __init__(self, model: str, detail: str = "") -> None:
        self.model = model
        message = f"model not found locally: {model!r}"
        super().__init__(f"{message} ({detail})" if detail else message)


class InvalidGenerationRequest(PermanentError):
    """A request the backend can never satisfy (bad size, unreadable reference image)."""


@runtime_checkable
class ImageBackend(Protocol):
    """Turns a `GenerationRequest` into a `GeneratedImage`, blocking the calling thread."""

    name: str
    model: str

    def load(self) -> None:
        """Load weights once; later calls are no-ops."""

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        """Make one image; raise `GenerationCancelled` if `cancel` is set meanwhile."""
        ...

    def cost_usd(self, seconds: float) -> float:
        """What `seconds` of this backend's compute cost."""
        ...


def hourly_cost(seconds: float, price_per_hour: float) -> float:
    """Compute time priced at an hourly rate (what a GPU pod costs while busy)."""
    return max(seconds, 0.0) * price_per_hour / 3600.0


def encode_png(image: Image.Image) -> bytes:
    """PNG with no timestamp or other varying chunk, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Reference-image bytes (PNG/JPEG/WebP) to RGB; unreadable bytes are a permanent error."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidGenerationRequest(f"reference image is not a readable image: {exc}") from exc
