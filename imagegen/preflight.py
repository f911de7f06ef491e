"""`python -m services.<role> --check`: can this installation run the service?

Imports every module of the service's package, the libraries it imports lazily (a
backend's, a model's) and the operator commands its image runs, then builds its settings
from the environment; prints one `key=value` line and exits 0, or names what is missing
and exits 1. The per-role install test runs it in a venv holding only that role's extra,
so a dependency missing from pyproject.toml fails CI rather than a deploy.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable

# Imported inside functions (only when configured), so walking the package misses them.
LAZY_IMPORTS: dict[str, tuple[str, ...]] = {
    "gateway": ("openai", "numpy"),
    "scheduler": ("openai",),
    "generator": ("torch", "diffusers", "transformers", "accelerate", "huggingface_hub"),
    "postprocess": ("dlib",),
    "storage": (),
    "analytics": (),
}
# Data-only packages the service finds without importing them (face_recognition_models
# imports pkg_resources, which recent setuptools lacks).
LOCATED: dict[str, tuple[str, ...]] = {"postprocess": ("face_recognition_models",)}
# Operator commands run from the role's image (the storage CronJob, migrations).
COMMANDS: dict[str, tuple[str, ...]] = {
    "storage": ("imagegen.cli", "imagegen.operations", "boto3"),
    "generator": ("imagegen.models",),
}


def _modules(role: str) -> list[str]:
    package = importlib.import_module(f"services.{role}")
    found = [m.name for m in pkgutil.walk_packages(package.__path__, f"services.{role}.")]
    return [*found, *LAZY_IMPORTS[role], *COMMANDS.get(role, ())]


def check(role: str, settings: Callable[[], object]) -> int:
    names = _modules(role)
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    for name in LOCATED.get(role, ()):
        if importlib.util.find_spec(name) is None:
            missing.append(f"{name} (not installed)")
    if missing:
        print(f"check=failed role={role} missing={'; '.join(missing)}", file=sys.stderr)
        return 1
    try:
        settings()
    except (ValueError, ImportError) as exc:
        print(f"check=failed role={role} settings={exc}", file=sys.stderr)
        return 1
    print(f"check=ok role={role} modules={len(names)}")
    return 0


def wants_check(argv: list[str] | None = None) -> bool:
    return "--check" in (sys.argv[1:] if argv is None else argv)
