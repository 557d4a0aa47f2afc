"""Smoke test: ``kitbooth bench --smoke --json FILE`` (the quick profile with the fewest repeats, a hidden flag)
writes valid JSON with exactly the documented keys. Figures are not asserted (they depend on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.common import KEYS


@pytest.mark.slow
def test_bench_writes_json_with_every_key(tmp_path, tiny_model_dir):
    out = tmp_path / "bench.json"
    env = {**os.environ, "KITBOOTH_BENCH_CACHE": str(tiny_model_dir.parent)}  # reuse the tests' tiny model
    proc = subprocess.run([sys.executable, "-m", "kitbooth.cli", "bench", "--smoke", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert list(data) == list(KEYS)
    assert all(v is None or isinstance(v, int | float) for v in data.values())
    assert "machine:" in proc.stdout and "torch" in proc.stdout


def test_cuda_without_a_gpu_fails_clearly():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "kitbooth.cli", "bench", "--device", "cuda", "--full-size"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "CUDA not available" in proc.stderr
