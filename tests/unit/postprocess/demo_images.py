"""The demo backend, loaded once for the postprocess and gateway face tests; its pack faces
come from `services.generator.backends.demo_faces.demo_face` (as bench/face_detection.py's)."""

from __future__ import annotations

from services.generator.backends.demo_faces import DemoFaceBackend


def demo_backend() -> DemoFaceBackend:
    backend = DemoFaceBackend()
    backend.load()
    return backend
