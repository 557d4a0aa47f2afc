"""Shared pieces of the benchmarks: timing, the machine line, the models and the concepts they use.

Every figure is a ratio against a baseline measured in the same run: ``median_time`` runs ``warmup`` calls
that are thrown away, then ``repeats`` timed calls, and returns the median (CUDA is synchronised around each
call so GPU timings are real).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The keys of ``kitbooth bench --json``: exactly these, null where not measured.
KEYS = (
    "train_step_ratio",
    "swap_ratio_ti",
    "swap_ratio_lora",
    "batch_throughput_ratio",
    "queue_overhead_ms_p50",
    "queue_overhead_ms_p95",
    "wait_behind_training_slices",
    "bot_generate_keyspace_ratio",
    "face_artifact_bytes_full_size",
    "ti_artifact_bytes_full_size",
    "face_train_seconds",
    "unet_its",
    "generate_4x25_seconds",
    "train_peak_gib",
    "generate_peak_gib",
    "best_of_cost_ratio",  # issue 14: time per image shown with best-of-N (N = 2k) ÷ plain generation
    "face_detail_cost_ratio",  # issue 14: with the face-detail pass ÷ plain generation
)

# Targets (issue 7): (key, comparison, bound). Lower is better for "<=", higher for ">=".
TARGETS: dict[str, tuple[str, float]] = {
    "train_step_ratio": ("<=", 0.6),
    "swap_ratio_ti": ("<=", 1.0),
    "swap_ratio_lora": ("<=", 1.0),
    "batch_throughput_ratio": (">=", 1.5),
    "queue_overhead_ms_p50": ("<=", 30.0),
    "wait_behind_training_slices": ("<=", 1.0),
    "bot_generate_keyspace_ratio": ("<=", 1.2),  # issue 10: /generate with 100k keys + 10k queued ÷ empty Redis
    "face_artifact_bytes_full_size": ("<=", 2_000_000),
    "ti_artifact_bytes_full_size": ("<=", 4_096),
    "face_train_seconds": ("<=", 30.0),  # one H100
    "unet_its": (">=", 100.0),  # one H100, 512² batch 2
    "train_peak_gib": ("<=", 10.0),
}


class BenchError(Exception):
    """A benchmark cannot run here (e.g. CUDA asked for on a machine without it)."""


@dataclass
class Report:
    """Figures (the JSON) plus human-readable detail lines per section."""

    figures: dict[str, float | int | None] = field(default_factory=lambda: dict.fromkeys(KEYS))
    lines: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)

    def set(self, key: str, value: float | int | None) -> None:
        if key not in self.figures:
            raise KeyError(key)
        self.figures[key] = value

    def note(self, text: str) -> None:
        self.lines.append(text)


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], *, repeats: int, warmup: int = 1, device: Any = "cpu") -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: Any) -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "none"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    return (f"machine: {cpu_model()}, {cores} cores, GPU {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), python {platform.python_version()}, device {device}")


def resolve_device(name: str) -> Any:
    import torch

    if name == "cuda":
        if not torch.cuda.is_available():
            raise BenchError("CUDA not available: --device cuda needs an NVIDIA GPU and a CUDA build of torch "
                             f"(this torch is {torch.__version__}).")
        return torch.device("cuda")
    return torch.device("cpu")


# --- models ------------------------------------------------------------------------------------------------------
def tiny_model_dir(cache: Path) -> Path:
    from training.tiny import make_tiny_model

    return make_tiny_model(cache / "tiny-model")


def load_tiny(cache: Path, device: Any) -> Any:
    """A fresh copy of the tiny SD-1.5-shaped pipeline (fp32), the same weights every time."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir(cache), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def default_cache() -> Path:
    return Path(os.environ.get("KITBOOTH_BENCH_CACHE", Path.home() / ".cache" / "kitbooth-bench"))


# --- concepts -------------------------------------------------------------------------------------------------------
def make_concept(pipe: Any, *, kind: str, method: str, seed: int, rank: int = 4, num_vectors: int = 2) -> Any:
    """A random concept artifact of ``method`` shaped for ``pipe`` (as a trainer of the default config makes it)."""
    import torch

    from training.artifact import ConceptArtifact
    from training.config import default_config
    from training.lora import find_targets

    cfg = default_config(kind, method=method, rank=rank, num_vectors=num_vectors)
    g = torch.Generator().manual_seed(seed)
    hidden = int(pipe.text_encoder.config.hidden_size)
    emb = torch.randn(len(cfg.tokens), hidden, generator=g) * 0.3 if cfg.uses_ti else None
    unet_lora: dict[str, torch.Tensor] = {}
    if cfg.uses_unet_lora:
        for path, fan_in, fan_out in find_targets(pipe.unet, cfg.unet_targets):
            unet_lora[f"{path}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) / fan_in**0.5
            unet_lora[f"{path}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * 0.01
    lora = bool(unet_lora)
    return ConceptArtifact(
        kind=kind, method=method, base_model="bench", hidden_size=hidden,
        tokens=list(cfg.tokens) if cfg.uses_ti else [cfg.lora_trigger], embeddings=emb, unet_lora=unet_lora,
        text_lora={}, rank=rank if lora else None, alpha=float(rank) if lora else None, steps=cfg.steps,
        created="2026-01-01T00:00:00Z", version="bench",
    )


def synthetic_photos(n: int, size: int, seed: int = 0) -> list[Any]:
    """``n`` face-like RGB images (a skin ellipse with eyes on a coloured background), deterministic."""
    import random

    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    out = []
    for i in range(n):
        im = Image.new("RGB", (size, size), (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
        d = ImageDraw.Draw(im)
        s = size / 64
        d.ellipse((int((12 + i % 4) * s), int(8 * s), int((52 - i % 4) * s), int(56 * s)), fill=(220, 180, 150))
        d.ellipse((int(22 * s), int(24 * s), int(28 * s), int(30 * s)), fill=(20, 20, 20))
        d.ellipse((int(36 * s), int(24 * s), int(42 * s), int(30 * s)), fill=(20, 20, 20))
        out.append(im)
    return out
