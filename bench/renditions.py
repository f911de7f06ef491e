"""One image's renditions before and after issue 16, step by step, and the floor.

- before: the rendition code as it was: decode; enhance; display JPEG; print by Pillow
  unsharp + Lanczos; thumbnail by Pillow Lanczos; one after another; then the quality
  score decoding the PNG a second time. S3: the three renditions staged (PUT), then four
  server-side COPYs to the final keys (storage).
- after: decoded once; the three renditions side by side (`render_image`, OpenCV print
  and thumbnail) with the quality score beside them. S3: one HEAD (is the final original
  there already?) and four PUTs straight to the final keys.
- floor (issue 16's "unavoidable work", measured alone): the PNG encode of the image, the
  three renditions (after), one PUT per object (original + three).

Each step runs alone on one image at a time; wall and CPU (this process, every thread;
for S3 plus SeaweedFS's own CPU) are medians over the images. The generator's PUT of the
staged original is the same before and after and left out of both. Results go to
bench/results/renditions.json with the machine's load.

    .venv/bin/python bench/renditions.py [--images 8] [--size 768] [--content faces|solid]
        [--no-s3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import free_port, machine, write_result

from imagegen.blobstore import S3BlobStore, blob_ref, put_staging
from imagegen.object_layout import CACHE_CONTROL, rendition_key
from schemas.jobs import ImageIdentity
from services.postprocess.quality import ImageStatsQualityScorer
from services.postprocess.renditions import (
    RenderedImage,
    _encoded,
    _print,
    _thumbnail,
    decode,
    enhance,
    open_image,
    png_bytes,
    render_image,
    rendition_pool,
    validate,
)
from services.postprocess.upscale import (
    LanczosSharpenUpscaler,
    OpenCVSharpenUpscaler,
    print_size,
)

DISPLAY = {"quality": 95, "max_bytes": 5 * 1024 * 1024}
PRINT_LIMIT = 40 * 1024 * 1024
THUMB = 256
SCORER = ImageStatsQualityScorer()

Sample = tuple[float, float]
"""(wall s, CPU s)"""


def _inputs(count: int, side: int, content: str) -> list[bytes]:
    if content == "solid":  # what the `instant` backend of bench/orchestration.py draws
        return [
            png_bytes(Image.new("RGB", (side, side), (40 + 20 * i % 200, 90, 160)))
            for i in range(count)
        ]
    from services.generator.backends.base import CancelToken, GenerationRequest
    from services.generator.backends.demo_faces import DemoFaceBackend

    backend = DemoFaceBackend()
    backend.load()
    out = []
    for i in range(count):
        request = GenerationRequest(
            prompt="",
            negative_prompt="",
            seed=1000 + i,
            width=side,
            height=side,
            steps=1,
            guidance=1.0,
            identity_seed=1013 + 7 * i,
        )
        out.append(backend.generate(request, lambda step, total: None, CancelToken()).png)
    return out


def _timed(fn: Callable[[], object]) -> Sample:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _old_thumbnail(display: Image.Image) -> RenderedImage:
    thumb = display.convert("RGB")
    thumb.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "WEBP", quality=85, method=4)
    return RenderedImage("thumbnail", buf.getvalue(), thumb.width, thumb.height, "webp", "x")


def _pillow_enhance(image: Image.Image) -> Image.Image:
    """`enhance` as it was before issue 16 (all Pillow; the inputs have no alpha)."""
    rgb = ImageOps.autocontrast(image.convert("RGB"), cutoff=0.5, preserve_tone=True)
    return ImageEnhance.Sharpness(ImageEnhance.Color(rgb).enhance(1.05)).enhance(1.15)


def before(data: bytes) -> list[RenderedImage]:
    """The rendition set and score as the service made them before issue 16."""
    image = open_image(data)
    validate(image)
    enhanced = _pillow_enhance(image)
    out = [
        _encoded("display", enhanced, **DISPLAY),
        _print(enhanced, print_size(image.size), None, LanczosSharpenUpscaler(), PRINT_LIMIT),
        _old_thumbnail(enhanced),
    ]
    SCORER.score(open_image(data))  # the second decode
    return out


def after(data: bytes) -> list[RenderedImage]:
    """As the handler does it now: one decode, renditions and score side by side."""
    image = decode(data)
    score = rendition_pool().submit(SCORER.score, image)
    out = render_image(image, thumbnail_size=THUMB, display_quality=95, display_max_bytes=5 << 20)
    score.result()
    return out


def renditions_only(data: bytes) -> list[RenderedImage]:
    """The floor's part: the three renditions of a decoded image, no score."""
    return render_image(
        decode(data), thumbnail_size=THUMB, display_quality=95, display_max_bytes=5 << 20
    )


def steps(data: bytes) -> dict[str, Sample]:
    """Each piece alone, one thread."""
    image = decode(data)
    enhanced = enhance(image)
    size = print_size(image.size)
    return {
        "decode": _timed(lambda: decode(data)),
        "enhance_before_pillow": _timed(lambda: _pillow_enhance(image)),
        "enhance_after_opencv_sharpen": _timed(lambda: enhance(image)),
        "display_jpeg": _timed(lambda: _encoded("display", enhanced, **DISPLAY)),
        "print_before_pillow_lanczos": _timed(
            lambda: _print(enhanced, size, None, LanczosSharpenUpscaler(), PRINT_LIMIT)
        ),
        "print_after_opencv": _timed(
            lambda: _print(enhanced, size, None, OpenCVSharpenUpscaler(), PRINT_LIMIT)
        ),
        "print_upscale_before": _timed(lambda: LanczosSharpenUpscaler().upscale(enhanced, size)),
        "print_upscale_after": _timed(lambda: OpenCVSharpenUpscaler().upscale(enhanced, size)),
        "thumbnail_before_pillow": _timed(lambda: _old_thumbnail(enhanced)),
        "thumbnail_after_opencv": _timed(lambda: _thumbnail(enhanced, THUMB)),
        "quality_score": _timed(lambda: SCORER.score(image)),
        "png_encode": _timed(lambda: png_bytes(image)),
    }


class S3Bench:
    """Both S3 sequences on a SeaweedFS of the benchmark's own, with its CPU."""

    def __init__(self, store: S3BlobStore, server_pid: int) -> None:
        import psutil  # type: ignore[import-untyped]

        self._store = store
        self._server = psutil.Process(server_pid)
        self._n = 0

    def _server_cpu(self) -> float:
        times = self._server.cpu_times()
        return float(times.user + times.system)

    async def _timed(self, work: Callable[[], Awaitable[object]]) -> tuple[float, float, float]:
        server, wall, cpu = self._server_cpu(), time.perf_counter(), time.process_time()
        await work()
        return (
            time.perf_counter() - wall,
            time.process_time() - cpu,
            self._server_cpu() - server,
        )

    def _image(self) -> ImageIdentity:
        self._n += 1
        return ImageIdentity(
            job_id="b", image_id=f"i{self._n}", image_index=0, image_count=1, user_id="u",
            character_id="c",
        )  # fmt: skip

    async def before(self, original: bytes, rendered: list[RenderedImage]) -> Any:
        image, store = self._image(), self._store
        original_ref = await put_staging(store, original, "image/png")  # the generator's

        async def work() -> None:
            refs = await asyncio.gather(
                *(put_staging(store, r.data, r.content_type) for r in rendered)
            )
            pairs = [(original_ref, rendition_key(image, "original", "png"), "image/png")]
            pairs += [
                (ref, rendition_key(image, r.name, r.format), r.content_type)
                for ref, r in zip(refs, rendered, strict=True)
            ]
            await asyncio.gather(
                *(
                    store.copy(ref.key, key, content_type=ct, cache_control=CACHE_CONTROL)
                    for ref, key, ct in pairs
                )
            )

        return await self._timed(work)

    async def after(self, original: bytes, rendered: list[RenderedImage]) -> Any:
        image, store = self._image(), self._store
        await put_staging(store, original, "image/png")  # the generator's

        async def work() -> None:
            await store.exists(rendition_key(image, "original", "png"))
            items = [("original", "png", original, "image/png")]
            items += [(r.name, r.format, r.data, r.content_type) for r in rendered]
            await asyncio.gather(
                *(
                    store.put(rendition_key(image, n, f), d, ct, cache_control=CACHE_CONTROL)
                    for n, f, d, ct in items
                )
            )
            for _, _, d, ct in items:  # the claim checks postprocess sends on
                blob_ref(d, ct)

        return await self._timed(work)

    async def floor(self, original: bytes, rendered: list[RenderedImage]) -> Any:
        image, store = self._image(), self._store
        items = [("original", "png", original, "image/png")]
        items += [(r.name, r.format, r.data, r.content_type) for r in rendered]

        async def work() -> None:
            await asyncio.gather(
                *(store.put(rendition_key(image, n, f), d, ct) for n, f, d, ct in items)
            )

        return await self._timed(work)


def _median_ms(samples: Sequence[tuple[float, ...]]) -> list[float]:
    return [round(statistics.median(column) * 1000, 1) for column in zip(*samples, strict=True)]


async def _s3_numbers(inputs: list[bytes], rendered: list[list[RenderedImage]]) -> dict[str, Any]:
    from pydantic import SecretStr

    from imagegen.settings import S3Settings
    from imagegen.stack.servers import SeaweedFS

    workdir = Path(tempfile.mkdtemp(prefix="bench-renditions-"))
    try:
        server = SeaweedFS(workdir / "s3", free_port(), "bench", "bench-secret", ["bench"])
        with server:
            assert server.pid is not None
            settings = S3Settings(
                endpoint=server.endpoint,
                bucket="bench",
                access_key=SecretStr("bench"),
                secret_key=SecretStr("bench-secret"),
            )
            async with S3BlobStore(settings) as store:
                s3 = S3Bench(store, server.pid)
                await s3.floor(inputs[0], rendered[0])  # warm the connections
                out: dict[str, Any] = {}
                for name in ("before", "after", "floor"):
                    method = getattr(s3, name)
                    samples = [await method(d, r) for d, r in zip(inputs, rendered, strict=True)]
                    wall, cpu, _ = _median_ms(samples)
                    # SeaweedFS's CPU is read in clock ticks (10 ms): a mean, not a median.
                    server_cpu = round(sum(s[2] for s in samples) / len(samples) * 1000, 1)
                    out[name] = {"wall_ms": wall, "cpu_ms": cpu, "seaweedfs_cpu_ms": server_cpu}
                return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--content", choices=("faces", "solid"), default="faces")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 writes (no weed)")
    args = parser.parse_args()
    inputs = _inputs(args.images, args.size, args.content)
    before(inputs[0])  # warm up: imports, the thread pool, caches
    after(inputs[0])
    result: dict[str, Any] = {
        "machine": machine(),
        "images": args.images,
        "size": args.size,
        "content": args.content,
        "print_size": print_size((args.size, args.size)),
    }
    per_step = [steps(d) for d in inputs]
    result["steps_alone"] = {
        name: dict(zip(("wall_ms", "cpu_ms"), _median_ms([s[name] for s in per_step]), strict=True))
        for name in per_step[0]
    }
    runs: dict[str, Callable[[bytes], list[RenderedImage]]] = {
        "before": before,
        "after": after,
        "floor": renditions_only,
    }
    for name, fn in runs.items():
        samples = [_timed(functools.partial(fn, d)) for d in inputs]
        wall, cpu = _median_ms(samples)
        result[f"renditions_{name}"] = {"wall_ms": wall, "cpu_ms": cpu}
    rendered = [after(d) for d in inputs]
    if not args.no_s3:
        result["s3"] = asyncio.run(_s3_numbers(inputs, rendered))
    png = result["steps_alone"]["png_encode"]
    floor = {
        "wall_ms": png["wall_ms"] + result["renditions_floor"]["wall_ms"],
        "cpu_ms": png["cpu_ms"] + result["renditions_floor"]["cpu_ms"],
    }
    if "s3" in result:
        s3_floor = result["s3"]["floor"]
        floor["wall_ms"] += s3_floor["wall_ms"]
        floor["cpu_ms"] += s3_floor["cpu_ms"] + s3_floor["seaweedfs_cpu_ms"]
    result["floor"] = {k: round(v, 1) for k, v in floor.items()}
    _print_table(result)
    write_result(f"renditions-{args.content}-{args.size}", result)


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['images']} images {result['size']}x{result['size']} ({result['content']}),"
        f" print {result['print_size']}, load {result['machine']['loadavg_start']}"
    )
    print(f"{'step (alone, one thread)':<32}{'wall ms':>9}{'CPU ms':>9}")
    for name, v in result["steps_alone"].items():
        print(f"{name:<32}{v['wall_ms']:>9}{v['cpu_ms']:>9}")
    for name, label in (
        ("renditions_before", "before: renditions + score"),
        ("renditions_after", "after: renditions + score"),
        ("renditions_floor", "after: renditions alone"),
    ):
        v = result[name]
        print(f"{label:<32}{v['wall_ms']:>9}{v['cpu_ms']:>9}")
    for name, v in result.get("s3", {}).items():
        print(
            f"{'s3 ' + name:<32}{v['wall_ms']:>9}{v['cpu_ms']:>9}"
            f"  (+ SeaweedFS {v['seaweedfs_cpu_ms']} ms CPU)"
        )
    v = result["floor"]
    print(f"{'floor (png + renditions + PUTs)':<32}{v['wall_ms']:>9}{v['cpu_ms']:>9}")


if __name__ == "__main__":
    main()
