"""The Dockerfiles (not buildable here: no Docker engine) parse and say what we rely on:
a non-root numeric user, the pinned torch before the project, `python -m` entry, no secrets."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
_SECRET = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|DATABASE_URL)", re.IGNORECASE)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        text = pending + line
        pending = ""
        word, _, args = text.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def torch_pin() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["optional-dependencies"]["generator"]  # the only role that runs torch
    [pin] = [d for d in deps if d.startswith("torch==")]
    return str(pin)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_contract(name: str) -> None:
    steps = instructions(ROOT / name)
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}
    assert {word for word, _ in steps} <= known
    # Base images are pinned to a tag, never latest.
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    for word, arg in steps:
        if word == "FROM":
            image = arg.split()[0]
            image = args.get(image.strip("${}"), image)
            assert ":" in image and not image.endswith(":latest"), image
    # torch, pinned as in pyproject, installed before the project itself.
    runs = [a for w, a in steps if w == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_at < project_at
    assert torch_pin() in runs[torch_at].split()
    assert "--index-url" in runs[torch_at]  # the CPU or CUDA wheel, not the default resolve
    # The last stage runs as a numeric non-root user, entered via `python -m <module>`.
    final = final_stage(steps)
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert json.loads(next(a for w, a in final if w == "ENTRYPOINT")) == ["python", "-m"]
    [module] = json.loads(next(a for w, a in final if w == "CMD"))
    assert (ROOT / module.replace(".", "/") / "__main__.py").is_file()
    exposed = {p for w, a in final if w == "EXPOSE" for p in a.split()}
    assert "8081" in exposed
    # No secrets baked in: no ENV/ARG that names one, no env files copied.
    for word, arg in steps:
        if word in ("ENV", "ARG"):
            assert not _SECRET.search(arg), f"{name}: {word} {arg}"
        if word == "COPY":
            assert ".env" not in arg


def test_cuda_image_is_nvidias_base_and_cpu_image_is_slim_python() -> None:
    cpu = dict(
        a.split("=", 1) for w, a in instructions(ROOT / "Dockerfile") if w == "ARG" and "=" in a
    )
    cuda = dict(
        a.split("=", 1)
        for w, a in instructions(ROOT / "Dockerfile.cuda")
        if w == "ARG" and "=" in a
    )
    assert cpu["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert cuda["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert cpu["TORCH_INDEX_URL"].endswith("/cpu")
    assert re.search(r"/cu\d+$", cuda["TORCH_INDEX_URL"])


def test_dockerignore_sends_only_the_project() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"  # everything excluded first: no .venv, .data, .git, keys
    included = {line[1:] for line in lines if line.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "schemas", "imagegen", "services"}
    assert "**/.env" in lines


def test_parser_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nENV IMAGEGEN_JWT_SECRET=abc \\\n  X=1\nUSER root\n")
    steps = instructions(bad)
    assert steps[1] == ("ENV", "IMAGEGEN_JWT_SECRET=abc X=1")
    assert _SECRET.search(steps[1][1])
    assert not final_stage(steps)[-1][1].isdigit()
