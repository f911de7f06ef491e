"""The benchmark scripts load and explain their options (they are run by hand, not in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", ["orchestration.py", "sse_fanout.py", "first_event.py"])
def test_bench_script_help(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--" in out.stdout
