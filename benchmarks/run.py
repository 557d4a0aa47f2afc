"""``kitbooth bench``: run every benchmark, print the figures against their targets, optionally write JSON.

Profiles (sizes chosen so each mode stays within its time budget; the output states every size used):

==========  =====================================================================================================
--quick     tiny model; training ratio at 128² (the default 512² makes the uncached baseline ~3 s a step on a CPU);
            swap at 512²; batch of 4 at 128², 10 steps; 20 queue jobs at 64², 4 steps; 3 generations during
            training; 60 /generate pairs for the bot's keyspace ratio. Under 2 minutes on a 2-core CPU.
(default)   tiny model; training ratio at 512² (the trainer's default); more repeats everywhere (200 /generate
            pairs for the bot's keyspace ratio: ``benchmarks/bot_generate.py``, Redis DBs 8 and 9).
--full-size real SD 1.5 architecture, random weights, fp16 (needs --device cuda): every ratio at 512², plus the
            GPU-mode figures (face training, UNet it/s, 4×25 generation, peak memory).
--smoke     (hidden) the quick profile with the fewest repeats: proves the command works end to end (tests).
==========  =====================================================================================================
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import KEYS, TARGETS, BenchError, Report, default_cache, machine_line, resolve_device


@dataclass(frozen=True)
class Profile:
    name: str
    train_resolution: int
    train_repeats: int
    swap_size: int
    swap_repeats: int
    diffusers_repeats: int
    batch_size: int
    batch_steps: int
    batch_repeats: int
    queue_size: int
    queue_steps: int
    queue_repeats: int
    gens_during_training: int
    slice_seconds: float
    wait_train_resolution: int
    full_repeats: int = 5
    bot_repeats: int = 200  # /generate calls per side of the bot keyspace ratio
    train_steps_full: int | None = None  # None: the face default (500)


PROFILES = {
    "smoke": Profile("smoke", 64, 1, 64, 2, 1, 64, 2, 1, 64, 2, 3, 1, 0.5, 64, bot_repeats=5),
    "quick": Profile("quick", 128, 3, 512, 10, 2, 128, 10, 3, 64, 4, 20, 3, 1.0, 64, bot_repeats=60),
    "default": Profile("default", 512, 4, 512, 30, 3, 128, 20, 5, 64, 4, 50, 6, 2.0, 128),
    "full-size": Profile("full-size", 512, 5, 512, 30, 3, 512, 25, 3, 512, 4, 20, 4, 2.0, 512, 10),
}


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and "bytes" in key):
        return f"{int(v):,}"
    return f"{v:g}"


def _verdict(key: str, v: Any) -> str:
    t = TARGETS.get(key)
    if t is None:
        return ""
    op, bound = t
    target = f"target {op} {bound:,g}"
    if v is None:
        return target
    ok = v <= bound if op == "<=" else v >= bound
    return f"{target}  {'met' if ok else 'NOT MET'}"


def render(report: Report, header: list[str]) -> str:
    width = max(len(k) for k in KEYS)
    rows = [*header, ""]
    for k in KEYS:
        v = report.figures[k]
        rows.append(f"  {k:<{width}}  {_fmt(k, v):>12}  {_verdict(k, v)}")
    rows.append("")
    rows += [f"  {line}" for line in report.lines]
    return "\n".join(rows)


def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "peft", "arq", "gpu_worker", "training", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def run(settings: Any, *, quick: bool = False, smoke: bool = False, device: str = "cpu", full_size: bool = False,
        only: list[str] | None = None, cache: Path | None = None, echo: Any = print) -> Report:
    """Run the benchmarks; ``only`` restricts to sections (train, swap, batch, levers, queue, bot, sizes, gpu)."""
    _quiet()
    dev = resolve_device(device)
    if full_size and dev.type != "cuda":
        raise BenchError("--full-size needs --device cuda (one SD 1.5 UNet step takes ~15 s on a CPU)")
    import torch

    from benchmarks import batch, bot_generate, fullsize, levers, queue, sizes, swap, train
    from benchmarks.common import load_tiny
    from training.compose import Composer

    profile = PROFILES["full-size" if full_size else "smoke" if smoke else "quick" if quick else "default"]
    cache = cache or default_cache()
    report = Report()
    sections = set(only or ["sizes", "train", "swap", "batch", "levers", "queue", "bot", "gpu"])
    t_all = time.perf_counter()
    header = [machine_line(dev), f"profile: {profile.name}; model: "
              + ("SD 1.5 architecture, random weights, fp16" if full_size else "tiny SD-1.5-shaped (random, fp32)")]
    echo(f"kitbooth bench: {profile.name} profile on {dev}")

    load = partial(fullsize.build_sd15, dev) if full_size else partial(load_tiny, cache, dev)
    pipe = load()
    composer = Composer(pipe, slots=settings.ti_slots, lora_cache=settings.lora_cache)

    def step(name: str, fn: Any) -> None:
        if name not in sections:
            return
        t0 = time.perf_counter()
        try:
            fn()
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others' figures
            logging.getLogger(__name__).exception("benchmark %s failed", name)
            report.note(f"{name}: FAILED ({type(exc).__name__}: {exc}); its figures are null")
        echo(f"  ... {name} done in {time.perf_counter() - t0:.1f} s")
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    p = profile
    step("sizes", lambda: sizes.run(report))
    step("train", lambda: train.run(report, load_pipe=load, device=dev, resolution=p.train_resolution,
                                    repeats=p.train_repeats))
    step("swap", lambda: swap.run(report, pipe=pipe, composer=composer, fresh_pipe=load, device=dev,
                                  size=p.swap_size, repeats=p.swap_repeats, diffusers_repeats=p.diffusers_repeats))
    step("batch", lambda: batch.run(report, pipe=pipe, composer=composer, device=dev, size=p.batch_size,
                                    steps=p.batch_steps, repeats=p.batch_repeats))
    step("levers", lambda: levers.run(report, pipe=pipe, composer=composer, device=dev, size=p.batch_size,
                                      steps=p.batch_steps, repeats=p.batch_repeats))
    step("queue", lambda: queue.run(report, settings=settings, pipe=pipe, composer=composer, size=p.queue_size,
                                    steps=p.queue_steps, repeats=p.queue_repeats,
                                    gens_during_training=p.gens_during_training, slice_seconds=p.slice_seconds,
                                    train_resolution=p.wait_train_resolution))
    step("bot", lambda: bot_generate.run(report, settings=settings, repeats=p.bot_repeats, redis_ok=queue.redis_ok))
    if full_size:
        step("gpu", lambda: fullsize.run(report, pipe=pipe, composer=composer, device=dev, repeats=p.full_repeats,
                                         train_steps=p.train_steps_full))
    else:
        report.note("GPU-mode figures (face_train_seconds, unet_its, generate_4x25_seconds, *_peak_gib): not measured "
                    "(run `kitbooth bench --device cuda --full-size` on a GPU)")
    report.note(f"total {time.perf_counter() - t_all:.1f} s")
    report.header = header
    return report


def write_json(report: Report, path: str | Path) -> None:
    data = {k: report.figures[k] for k in KEYS}
    assert set(data) == set(KEYS)
    tmp = Path(f"{path}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
