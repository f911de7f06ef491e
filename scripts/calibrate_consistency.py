"""Print the consistency-score distributions behind the default threshold.

Generates packs of the offline demo faces (same identity within a pack, different across
packs), embeds every face dlib detects and prints percentiles of the scores
(1 - embedding distance) for same-identity and different-identity pairs, and the share
of faces detected. Demo output: DigiFace-1M's licence applies to the faces.

    .venv/bin/python scripts/calibrate_consistency.py [--identities 8] [--per-identity 6]
"""

from __future__ import annotations

import argparse
import io
import itertools
import time

import numpy as np
from PIL import Image

from services.generator.backends.base import CancelToken, GenerationRequest
from services.generator.backends.demo_faces import DemoFaceBackend
from services.postprocess.consistency import DlibFaceEncoder, Embedding, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--per-identity", type=int, default=6)
    args = parser.parse_args()
    backend = DemoFaceBackend()
    backend.load()
    encoder = DlibFaceEncoder()
    found: dict[tuple[int, int], Embedding] = {}
    started = time.perf_counter()
    total = args.identities * args.per_identity
    for identity, index in itertools.product(range(args.identities), range(args.per_identity)):
        request = GenerationRequest(
            prompt="",
            negative_prompt="",
            seed=1000 + index * 7919,
            width=256,
            height=256,
            steps=1,
            guidance=1.0,
            identity_seed=(identity + 1) * 1013,
        )
        image = backend.generate(request, lambda *_: None, CancelToken())
        vector = encoder.embed(Image.open(io.BytesIO(image.png)))
        if vector is not None:
            found[identity, index] = vector
    elapsed = time.perf_counter() - started
    pairs = list(itertools.combinations(found, 2))
    same = [score(found[a], found[b]) for a, b in pairs if a[0] == b[0]]
    diff = [score(found[a], found[b]) for a, b in pairs if a[0] != b[0]]
    print(f"faces detected: {len(found)}/{total}; {elapsed / total:.3f} s per image")
    for name, scores in (("same identity", same), ("different", diff)):
        p5, p50, p95 = np.percentile(scores, [5, 50, 95])
        print(f"{name:>14}: n={len(scores)} p5={p5:.3f} p50={p50:.3f} p95={p95:.3f}")


if __name__ == "__main__":
    main()
