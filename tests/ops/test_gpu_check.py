"""``scripts/gpu-check`` (the prepared command for a lent GPU machine) on CPU with the tiny profile, so it
cannot rot before a GPU is lent: every step passes and the JSON, the log and the images are there."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from PIL import Image

from tests.ops.conftest import ROOT

STEPS = ["build", "train", "generate", "upscale", "bench"]


@pytest.mark.slow
def test_gpu_check_tiny_profile_on_cpu(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--profile", "tiny", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=540,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["ok"] and list(report["steps"]) == STEPS, report["steps"]
    assert all(s["ok"] and s["error"] is None for s in report["steps"].values())
    figures = report["figures"]
    assert figures["train.slices"] >= 2 and figures["train.artifact_bytes"] > 0  # trained in resumed slices
    assert figures["generate.count"] == 4 and figures["build.dtype"] == "torch.float32"
    assert report["environment"]["torch"] == torch.__version__
    sizes = {Image.open(out / f"image-{i}.png").size for i in range(4)}
    assert sizes == {(64, 64)} and Image.open(out / "upscaled.png").size == (128, 128)
    log = (out / "gpu-check.log").read_text()
    assert "step bench ok" in log and "all steps passed" in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_without_cuda_says_so():
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("gpu-check: CUDA not available"), proc.stderr
