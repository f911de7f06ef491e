"""Face detection rate on the demo's identities: dlib HOG (as before) vs dlib's CNN (MMOD).

The demo backend draws 64 px GAN faces, upscaled to 256 px as postprocess does. For each
of `--identities` character seeds (a fixed draw, as the stack's random character seeds
are) it makes `--images` images, as a pack would, and asks each detector for a face.
Prints the rate per detector and the time per image, and writes
bench/results/face_detection.json. Not a test: nothing here asserts.

    .venv/bin/python bench/face_detection.py [--identities 48] [--images 6]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dlib  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from imagegen.faces import FaceCascade, model_dir, prepare  # noqa: E402
from services.generator.backends.demo_faces import DemoFaceBackend, demo_face  # noqa: E402


def demo_seeds(identities: int) -> list[int]:
    """A fixed draw of character seeds (the stack draws them at random)."""
    return random.Random(20).sample(range(2**31), identities)


def demo_faces(seeds: list[int], images: int, size: int) -> Iterator[tuple[int, Image.Image]]:
    """`images` demo images of each identity, as a pack of its character would have."""
    backend = DemoFaceBackend()
    backend.load()
    for identity in seeds:
        for index in range(images):
            yield identity, demo_face(backend, identity, index, size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=24)
    parser.add_argument("--images", type=int, default=5)
    args = parser.parse_args()
    hog = dlib.get_frontal_face_detector()
    cnn = dlib.cnn_face_detection_model_v1(str(model_dir() / "mmod_human_face_detector.dat"))
    cascade = FaceCascade(dlib, model_dir())

    def shrunk(px: np.ndarray, side: int) -> np.ndarray:
        return np.asarray(Image.fromarray(px).resize((side, side), Image.Resampling.BILINEAR))

    detectors: dict[str, Callable[[np.ndarray], Any]] = {
        "hog 0 then 1 upsample (before)": lambda px: hog(px, 0) or hog(px, 1),
        "cnn mmod at 256 px": lambda px: cnn(px, 0),
        "cnn mmod at 160 px": lambda px: cnn(shrunk(px, 160), 0),
        "cascade hog, cnn, hog x2 (now)": lambda px: cascade.detect(px, 1),
    }
    seeds = demo_seeds(args.identities)
    found = {name: 0 for name in detectors}
    seconds = {name: 0.0 for name in detectors}
    per_identity: dict[str, dict[int, int]] = {name: {} for name in detectors}
    total = 0
    for identity, image in demo_faces(seeds, args.images, 256):
        pixels = np.asarray(prepare(image), dtype=np.uint8)
        total += 1
        for name, detect in detectors.items():
            started = time.perf_counter()
            hit = bool(detect(pixels))
            seconds[name] += time.perf_counter() - started
            found[name] += hit
            per_identity[name][identity] = per_identity[name].get(identity, 0) + hit
    load = os.getloadavg()
    result: dict[str, Any] = {
        "images": total,
        "identities": len(seeds),
        "load_average": load,
        "detectors": {
            name: {
                "detected": found[name],
                "rate": round(found[name] / total, 4),
                "ms_per_image": round(1000 * seconds[name] / total, 1),
                "identities_with_no_face": sum(1 for v in per_identity[name].values() if v == 0),
                "identities_under_half": sum(
                    1 for v in per_identity[name].values() if v < args.images / 2
                ),
            }
            for name in detectors
        },
    }
    for name, row in result["detectors"].items():
        print(
            f"{name:34s} {row['detected']:4d}/{total} ({row['rate']:.1%}) "
            f"{row['ms_per_image']:7.1f} ms/image  identities with none: "
            f"{row['identities_with_no_face']}"
        )
    print(f"load average {load}")
    out = REPO / "bench" / "results" / "face_detection.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
