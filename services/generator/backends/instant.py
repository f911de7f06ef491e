"""A backend that does no compute: a solid-colour PNG of the requested size, at once.

For measuring what the engine itself costs (queues, hops, storage, events) with the model
taken out: benchmarks (`bench/orchestration.py`) and load tests run the stack with it.
The colour follows the seed, so different images have different bytes (and staging keys).

The PNG is written directly rather than through Pillow's encoder: a solid frame's rows are
all alike, so every row but the first is filtered "Up" to zeros, and that part (compressed
once per size, then reused) is the same whatever the colour. Pillow's adaptive filtering and
deflate over 1.8 MB of raw pixels took 14 ms of CPU per 768 px image, a cost the real
backends pay for their own pixels but a backend meant to cost nothing should not.
"""

from __future__ import annotations

import struct
import time
import zlib
from functools import lru_cache

from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ProgressCallback,
)

INSTANT_MODEL = "instant-solid-colour"


def solid_colour(seed: int) -> tuple[int, int, int]:
    """A mid-tone colour from the seed (never black or white, so exposure checks pass)."""
    return (64 + seed % 128, 64 + (seed // 128) % 128, 64 + (seed // 16_384) % 128)


_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_NONE, _FILTER_UP = b"\x00", b"\x02"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@lru_cache(maxsize=8)
def _later_rows(width: int, height: int) -> tuple[bytes, bytes]:
    """Rows 2..height of a solid RGB frame, filtered "Up" (all zeros): the raw bytes (for the
    checksum) and their deflate stream, final block included."""
    raw = (_FILTER_UP + bytes(3 * width)) * (height - 1)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    return raw, compressor.compress(raw) + compressor.flush()


def solid_png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """An 8-bit RGB PNG of one colour, no ancillary chunks (equal inputs, equal bytes)."""
    first = _FILTER_NONE + bytes(colour) * width
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    # The first row's blocks end byte-aligned and non-final (a full flush); the later rows'
    # own stream follows, so the two join into one valid deflate stream.
    head = compressor.compress(first) + compressor.flush(zlib.Z_FULL_FLUSH)
    raw, later = _later_rows(width, height) if height > 1 else (b"", b"\x03\x00")
    checksum = zlib.adler32(raw, zlib.adler32(first))
    stream = b"\x78\x9c" + head + later + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


class InstantBackend:
    """Answers every request immediately with a solid-colour image; costs nothing."""

    name = "instant"

    def __init__(self, model: str | None = None) -> None:
        self.model = model or INSTANT_MODEL

    def load(self) -> None:
        """Nothing to load."""

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        if cancel.is_set():
            raise GenerationCancelled("cancelled before generation started")
        started = time.perf_counter()
        png = solid_png(request.width, request.height, solid_colour(request.seed))
        on_progress(1, 1)
        return GeneratedImage(
            png=png,
            width=request.width,
            height=request.height,
            backend=self.name,
            model=self.model,
            device="cpu",
            versions={},
            demo=True,
            steps_run=1,
            seconds=time.perf_counter() - started,
        )

    def cost_usd(self, seconds: float) -> float:
        return 0.0
