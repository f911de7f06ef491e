"""The instant backend (used by bench/orchestration.py): requested size, no compute, cancel."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from services.generator.backends import (
    CancelToken,
    GenerationCancelled,
    GenerationRequest,
    build_backend,
)
from services.generator.backends.instant import solid_colour, solid_png


def _request(seed: int) -> GenerationRequest:
    return GenerationRequest(
        prompt="a lighthouse",
        negative_prompt="",
        seed=seed,
        width=96,
        height=64,
        steps=20,
        guidance=5.0,
        identity_seed=1,
    )


def test_instant_backend_returns_a_solid_png_of_the_requested_size() -> None:
    backend = build_backend("instant", None)
    backend.load()
    steps: list[tuple[int, int]] = []
    one = backend.generate(_request(3), lambda s, t: steps.append((s, t)), CancelToken())
    other = backend.generate(_request(4), lambda s, t: None, CancelToken())
    with Image.open(io.BytesIO(one.png)) as image:
        assert image.size == (96, 64) and image.mode == "RGB"
        assert len(set(image.getdata())) == 1
    assert (one.width, one.height, one.backend, one.demo) == (96, 64, "instant", True)
    assert steps == [(1, 1)]
    assert one.png != other.png, "the colour follows the seed"
    assert backend.cost_usd(one.seconds) == 0.0


def test_instant_backend_honours_a_cancel_set_before_it_starts() -> None:
    cancel = CancelToken()
    cancel.set()
    with pytest.raises(GenerationCancelled):
        build_backend("instant", None).generate(_request(1), lambda s, t: None, cancel)


@pytest.mark.parametrize("size", [(96, 64), (64, 1), (768, 768), (1024, 576)])
def test_instant_png_decodes_to_exactly_the_solid_frame(size: tuple[int, int]) -> None:
    colour = solid_colour(123_456)
    data = solid_png(*size, colour)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # checks the zlib stream's checksum and every CRC
        assert image.format == "PNG" and image.mode == "RGB" and image.size == size
        assert list(image.getdata()) == [colour] * (size[0] * size[1])
    # zlib checks the stream's Adler-32 (Pillow may stop reading once it has the pixels).
    idat_length = int.from_bytes(data[33:37], "big")
    assert data[37:41] == b"IDAT"
    assert len(zlib.decompress(data[41 : 41 + idat_length])) == size[1] * (1 + 3 * size[0])
    assert solid_png(*size, colour) == data, "equal inputs give equal bytes"
