"""The demo backend's faces, as a pack of a character draws them (pack index i has seed
1000 + 7919 i, as bench/face_detection.py's draw): shared by the postprocess tests."""

from __future__ import annotations

import io

from PIL import Image

from services.generator.backends.base import CancelToken, GenerationRequest
from services.generator.backends.demo_faces import DemoFaceBackend


def demo_backend() -> DemoFaceBackend:
    backend = DemoFaceBackend()
    backend.load()
    return backend


def demo_face(backend: DemoFaceBackend, identity: int, index: int, size: int) -> Image.Image:
    """Image `index` of a pack of the character whose seed is `identity`, RGB."""
    request = GenerationRequest(
        prompt="",
        negative_prompt="",
        seed=1000 + index * 7919,
        width=size,
        height=size,
        steps=1,
        guidance=1.0,
        identity_seed=identity,
    )
    png = backend.generate(request, lambda step, total: None, CancelToken()).png
    return Image.open(io.BytesIO(png)).convert("RGB")
