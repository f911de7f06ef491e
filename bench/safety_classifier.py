"""The image-safety classifier on images that must pass: false-positive rate and time.

Runs nsfwjs's MobileNetV2 (imagegen/safety.py) on the demo's faces (the same fixed draw of
character seeds as bench/face_detection.py, 5 images each), the test suite's photo
(tests/unit/gateway/data/face.jpg), images of the tiny diffusers pipeline the tests use,
and the flat and noise images the unit tests make. Every one of them is safe, so each
refusal is a false positive. Prints the rates at the general and the children thresholds
and writes bench/results/safety_classifier.json. Not a test: nothing here asserts.

    scripts/fetch_safety_model.sh && .venv/bin/python bench/safety_classifier.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from face_detection import demo_faces, demo_seeds  # noqa: E402
from PIL import Image  # noqa: E402

from imagegen.safety import SafetyCheck, load_nsfwjs  # noqa: E402


def tiny_pipeline_images(count: int) -> list[Image.Image]:
    import torch
    from diffusers import StableDiffusionPipeline

    from tests.fixtures.tiny_pipeline import build_tiny_sd

    with tempfile.TemporaryDirectory() as folder:
        pipe = StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            str(build_tiny_sd(Path(folder)))
        )
        pipe.set_progress_bar_config(disable=True)
        images = []
        for seed in range(count):
            result = pipe(
                "a portrait of a girl",
                num_inference_steps=2,
                height=64,
                width=64,
                generator=torch.Generator().manual_seed(seed),
            )
            images.append(result.images[0])
        return images


def test_images() -> list[Image.Image]:
    photo = Image.open(REPO / "tests" / "unit" / "gateway" / "data" / "face.jpg").convert("RGB")
    flat = [
        Image.new("RGB", (64, 64), colour)
        for colour in ((255, 10, 10), (153, 10, 10), (120, 180, 90), (0, 0, 0), (255, 255, 255))
    ]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8))
    return [photo, *flat, noise]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=24)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--package", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    check = SafetyCheck(load_nsfwjs(args.package))
    load_s = time.perf_counter() - started
    sets = {
        "demo faces": [
            image for _, image in demo_faces(demo_seeds(args.identities), args.images, 512)
        ],
        "test images": test_images() + tiny_pipeline_images(4),
    }
    result: dict[str, object] = {
        "model": check.classifier.name,
        "thresholds": {"general": check.policy.general, "children": check.policy.children},
        "load_s": round(load_s, 2),
        "sets": {},
    }
    for name, images in sets.items():
        scores, seconds, cpu = [], 0.0, 0.0
        for image in images:
            t, c = time.perf_counter(), time.process_time()
            scores.append(check.check(image).score)
            seconds += time.perf_counter() - t
            cpu += time.process_time() - c
        row = {
            "images": len(images),
            "refused_general": sum(s > check.policy.general for s in scores),
            "refused_children": sum(s > check.policy.children for s in scores),
            "max_score": max(scores),
            "median_score": float(np.median(scores)),
            "ms_per_image": round(1000 * seconds / len(images), 1),
            "cpu_ms_per_image": round(1000 * cpu / len(images), 1),
        }
        result["sets"][name] = row  # type: ignore[index]
        print(
            f"{name:12s} {row['images']:4d} images: false positives general "
            f"{row['refused_general']} ({row['refused_general'] / len(images):.1%}), children "
            f"{row['refused_children']} ({row['refused_children'] / len(images):.1%}); "
            f"max score {row['max_score']:.3f}, median {row['median_score']:.3f}; "
            f"{row['ms_per_image']} ms/image ({row['cpu_ms_per_image']} ms CPU)"
        )
    result["load_average"] = os.getloadavg()
    print(f"model load {load_s:.1f} s; load average {result['load_average']}")
    out = REPO / "bench" / "results" / "safety_classifier.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
