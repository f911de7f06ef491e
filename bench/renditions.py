"""Per-image time for the whole rendition set, against a naive Pillow baseline.

The baseline does the same outputs the simplest way (convert, resize, save) without
enhancement, sharpening or the display size guard; both run in this process on the same
inputs, so the ratio is meaningful on any machine.

    .venv/bin/python bench/renditions.py [--images 10] [--size 512x512]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from services.postprocess.renditions import render
from services.postprocess.upscale import print_size


def _inputs(count: int, size: tuple[int, int]) -> list[bytes]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(count):
        # Smooth noise: compresses like a picture, not like static.
        small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def ours(data: bytes) -> None:
    render(data, display_quality=95, display_max_bytes=5 * 1024 * 1024, thumbnail_size=256)


def naive(data: bytes) -> None:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.save(io.BytesIO(), "JPEG", quality=95)
    image.resize(print_size(image.size)).save(io.BytesIO(), "JPEG", quality=95)
    thumb = image.copy()
    thumb.thumbnail((256, 256))
    thumb.save(io.BytesIO(), "WEBP")


def _time(fn: Callable[[bytes], None], inputs: list[bytes]) -> list[float]:
    times = []
    for data in inputs:
        start = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--size", default="512x512")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    inputs = _inputs(args.images, (width, height))
    ours(inputs[0])  # warm up
    for name, fn in (("imagegen renditions", ours), ("naive Pillow baseline", naive)):
        times = _time(fn, inputs)
        print(
            f"{name:>22}: {statistics.median(times) * 1000:7.1f} ms/image median,"
            f" {max(times) * 1000:7.1f} ms max ({args.images} images {width}x{height},"
            f" print {print_size((width, height))})"
        )


if __name__ == "__main__":
    main()
