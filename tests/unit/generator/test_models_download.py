"""`imagegen models download`: local paths are reported, an unreachable hub is one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen.models import run_download


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_hub_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "IMAGEGEN_"))}
    # Online, but the "hub" is a closed loopback port: the connection is refused at once.
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "models", "download", "--model", "acme/no-such"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: acme/no-such: cannot download")
    assert done.stdout == ""


def test_local_path_is_reported_as_present(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_download([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path}: local path, already present"


def test_offline_setting_is_named_when_a_hub_id_is_asked_for(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_download(["acme/no-such"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_nothing_configured_says_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEGEN_GENERATOR_MODEL", raising=False)
    monkeypatch.delenv("IMAGEGEN_GENERATOR_IP_ADAPTER", raising=False)
    assert run_download(None) == 2
    assert "IMAGEGEN_GENERATOR_MODEL" in capsys.readouterr().err
