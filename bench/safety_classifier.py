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
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from face_detection import demo_faces, demo_seeds  # noqa: E402
from PIL import Image  # noqa: E402

from imagegen.faces import load_cascade  # noqa: E402
from imagegen.safety import (  # noqa: E402
    CLASSES,
    FRAMED_CONFIRM,
    FRAMED_SCALE,
    PORTRAIT_FACE_SHARE,
    SafetyCheck,
    load_nsfwjs,
)


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
    classifier = load_nsfwjs(args.package)
    cascade = load_cascade()
    assert cascade is not None, "dlib and face_recognition_models are needed"
    check = SafetyCheck(classifier, faces=cascade)
    load_s = time.perf_counter() - started
    general, children = check.policy.threshold("general"), check.policy.threshold("children")
    sets = {
        "demo faces": [
            image for _, image in demo_faces(demo_seeds(args.identities), args.images, 512)
        ],
        "test images": test_images() + tiny_pipeline_images(4),
    }
    result: dict[str, object] = {
        "model": check.classifier.name,
        "thresholds": {"general": general, "children": children},
        "rule": {
            "portrait_face_share": PORTRAIT_FACE_SHARE,
            "framed_scale": FRAMED_SCALE,
            "framed_confirm": FRAMED_CONFIRM,
        },
        "load_s": round(load_s, 2),
        "sets": {},
    }
    for name, images in sets.items():
        # As postprocess checks them: the demo backend's images are close-ups by
        # construction; every other image gets the framed look only if a face fills it.
        close_up = name == "demo faces"
        verdicts, seconds, cpu = [], 0.0, 0.0
        for image in images:
            t, c = time.perf_counter(), time.process_time()
            # The children threshold is the lower: whatever general refuses, it looks at too.
            verdicts.append(check.check(image, "children", close_up=close_up))
            seconds += time.perf_counter() - t
            cpu += time.process_time() - c
        scores = [v.score for v in verdicts]
        classes = [v.classes for v in verdicts]
        as_general = [replace(v, threshold=general) for v in verdicts]
        row = {
            "images": len(images),
            "close_up": close_up,
            "one_view_refused": {
                "general": sum(s > general for s in scores),
                "children": sum(s > children for s in scores),
            },
            "refused": {
                "general": sum(v.refused for v in as_general),
                "children": sum(v.refused for v in verdicts),
            },
            "framed_looks": sum(v.framed_score is not None for v in verdicts),
            "max_score": max(scores),
            "median_score": float(np.median(scores)),
            "max_framed_score": max((v.framed_score or 0.0 for v in verdicts), default=0.0),
            "ms_per_image": round(1000 * seconds / len(images), 1),
            "cpu_ms_per_image": round(1000 * cpu / len(images), 1),
            "top_class": {
                label: sum(1 for c in classes if max(c, key=c.__getitem__) == label)
                for label in CLASSES
            },
            "max_by_class": {label: max(c[label] for c in classes) for label in CLASSES},
            "per_image": [{"classes": v.classes, "framed_score": v.framed_score} for v in verdicts],
        }
        result["sets"][name] = row  # type: ignore[index]
        n = len(images)
        one: dict[str, int] = row["one_view_refused"]  # type: ignore[assignment]
        now: dict[str, int] = row["refused"]  # type: ignore[assignment]
        print(
            f"{name:12s} {n:4d} images: false positives, one view: general {one['general']}"
            f" ({one['general'] / n:.1%}), children {one['children']} ({one['children'] / n:.1%});"
            f" {'every image a close-up' if close_up else 'framed look at close-ups'}:"
            f" general {now['general']}"
            f" ({now['general'] / n:.1%}), children {now['children']} ({now['children'] / n:.1%})"
        )
        print(
            f"{'':12s} framed looks {row['framed_looks']}, max framed score"
            f" {row['max_framed_score']:.3f}; {row['ms_per_image']} ms/image"
            f" ({row['cpu_ms_per_image']} ms CPU)"
        )
        print(f"{'':12s} top class {row['top_class']}; max by class {row['max_by_class']}")
    result["load_average"] = os.getloadavg()
    print(f"model load {load_s:.1f} s; load average {result['load_average']}")
    out = REPO / "bench" / "results" / "safety_classifier.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
