"""Offline demo backend: real 64x64 faces from the DCGAN weights shipped in `gan-face-generate`.

It ignores the prompt (the GAN is unconditional) but keeps the engine's promise that
matters for demos: every image of one character shows the same person. The character's
`identity_seed` fixes a latent; each image's `seed` nudges it a little, so a pack varies
in lighting, expression and framing without drifting to someone else. Outputs are
labelled `demo=True`; DigiFace-1M's licence applies to them.
"""

from __future__ import annotations

import importlib.util
import io
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFilter, ImageOps

from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ModelNotFoundError,
    ProgressCallback,
    encode_png,
    hourly_cost,
)

DEMO_MODEL = "dcgan-digiface-demo"
_PACKAGE = "gan_face_generate"
_LATENT = 100  # nz of the published generator
_FEATURES = 64  # ngf
_NATIVE = 64  # output side, pixels
# Chosen by eye over a few dozen identities: 0.3 keeps the face recognisably the same
# person while pose, lighting and expression move; from 0.5 some identities drift away.
_VARIATION = 0.3
# Offsets keep the identity stream and the per-image stream from ever sharing a seed.
_VARIATION_STREAM = 0x5EED_0000_0000


def locate_weights() -> Path:
    """Find `weights.tar` without importing the package (its CLI pulls in torchvision)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(DEMO_MODEL, f"package {_PACKAGE!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights.tar"
    if not path.is_file():
        raise ModelNotFoundError(DEMO_MODEL, f"{path} is missing")
    return path


def _latent(seed: int) -> torch.Tensor:
    return torch.randn(_LATENT, generator=torch.Generator("cpu").manual_seed(seed))


def face_latent(identity_seed: int, seed: int, variation: float = _VARIATION) -> torch.Tensor:
    """The character's latent nudged by the image seed, kept on the Gaussian shell.

    Rescaling to the identity latent's norm keeps the sample where the GAN was trained
    (|z| ~ sqrt(100)); a plain sum would drift outward and look washed out.
    """
    base = _latent(identity_seed)
    nudged = base + variation * _latent(_VARIATION_STREAM + seed)
    latent: torch.Tensor = nudged * (base.norm() / nudged.norm())
    return latent


class DemoFaceBackend:
    """Deterministic faces on CPU in milliseconds; no GPU, network or hub needed."""

    name = "demo"

    def __init__(self, *, price_per_hour: float = 0.0, device: str | None = None) -> None:
        self.model = DEMO_MODEL
        self._price_per_hour = price_per_hour
        # CPU by default: the net is 3.6M parameters and CPU results are reproducible.
        self._device = torch.device(device or "cpu")
        self._net: torch.nn.Module | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._net is None:
                self._net = self._build()

    def _build(self) -> torch.nn.Module:
        weights = locate_weights()  # first, so a missing package is a ModelNotFoundError
        # Only `models`: it needs torch alone, unlike the package's CLI (torchvision).
        from gan_face_generate.models import Generator

        state = torch.load(weights, map_location="cpu", weights_only=True)
        net: Any = Generator(0, 3, _LATENT, _FEATURES)
        net.load_state_dict(state["netG_state_dict"])
        net.eval()  # BatchNorm must use its running statistics, not the batch of one
        module: torch.nn.Module = net.to(self._device)
        return module

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        self.load()
        assert self._net is not None
        if cancel.is_set():
            raise GenerationCancelled("cancelled before generation started")
        started = time.perf_counter()
        z = face_latent(request.identity_seed, request.seed).to(self._device)
        with self._lock, torch.inference_mode():
            pixels = self._net(z.view(1, _LATENT, 1, 1))[0]
        face = _to_image(pixels)
        # A mirrored face is still the same person: cheap, honest pose variety for packs.
        if request.seed % 2:
            face = ImageOps.mirror(face)
        on_progress(1, 1)
        image = fit(face, request.width, request.height)
        png = encode_png(image)
        return GeneratedImage(
            png=png,
            width=image.width,
            height=image.height,
            backend=self.name,
            model=self.model,
            device=str(self._device),
            versions={"torch": torch.__version__, "gan-face-generate": _package_version()},
            demo=True,
            steps_run=1,
            seconds=time.perf_counter() - started,
        )

    def cost_usd(self, seconds: float) -> float:
        return hourly_cost(seconds, self._price_per_hour)


def demo_face(backend: DemoFaceBackend, identity_seed: int, index: int, size: int) -> Image.Image:
    """Image `index` of a fixed demo pack of the character whose seed is `identity_seed`, an
    RGB square of `size` px (image i has seed 1000 + 7919 i): the faces the tests and the
    face benches compare."""
    request = GenerationRequest(
        prompt="",
        negative_prompt="",
        seed=1000 + index * 7919,
        width=size,
        height=size,
        steps=1,
        guidance=1.0,
        identity_seed=identity_seed,
    )
    png = backend.generate(request, lambda step, total: None, CancelToken()).png
    return Image.open(io.BytesIO(png)).convert("RGB")


def _to_image(pixels: torch.Tensor) -> Image.Image:
    """Tanh output in [-1, 1], CHW, to an RGB image."""
    array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Upscale to width x height without stretching the face or cropping it off.

    The whole face is scaled to fit (Lanczos keeps the most detail when enlarging 64 px
    many times over); any leftover band is filled with a blurred, cropped copy of the
    same image rather than flat bars, as photo apps do for off-aspect frames.
    """
    size = (width, height)
    if image.size == size:
        return image
    face = ImageOps.contain(image, size, method=Image.Resampling.LANCZOS)
    if face.size == size:
        return face
    backdrop = ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
    backdrop = backdrop.filter(ImageFilter.GaussianBlur(radius=max(size) / 40))
    backdrop.paste(face, ((width - face.width) // 2, (height - face.height) // 2))
    return backdrop


def _package_version() -> str:
    try:
        return version("gan-face-generate")
    except PackageNotFoundError:
        return "unknown"
