"""A stand-in image-safety classifier for end-to-end tests, named by
IMAGEGEN_SAFETY_CLASSIFIER_FACTORY: it calls every image explicit, so the refusal path runs
on a real stack through the classifier's own interface (nothing else is faked)."""

from __future__ import annotations

from PIL import Image

FACTORY = "tests.e2e.safety_probe:always_unsafe"


class AlwaysUnsafe:
    """P(porn) 0.97 for any image: above every threshold of every audience."""

    name = "e2e-always-unsafe"

    def classify(self, image: Image.Image) -> dict[str, float]:
        image.load()  # it was given a readable image, as nsfwjs would be
        return {"drawing": 0.0, "hentai": 0.01, "neutral": 0.02, "porn": 0.97, "sexy": 0.0}


def always_unsafe() -> AlwaysUnsafe:
    return AlwaysUnsafe()
