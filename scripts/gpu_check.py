"""The one prepared check for a lent GPU machine (``scripts/gpu-check``): it must finish in about 8 minutes.

Profile ``full`` (default, CUDA): SD 1.5's architecture with random weights, built offline on the GPU in fp16
(benchmarks/fullsize.py, the worker's own optimisations; xformers when installed) and kept resident; then
  1. a face trained in slices (checkpoint → resume, as the worker's slices do) into one concept file;
  2. 4 images at 512² with that face + a kit composed (the base pipeline restored afterwards);
  3. a ×2 upscale of one image;
  4. ``kitbooth bench --device cuda --full-size`` in a child process, with what time is left.
Profile ``tiny`` runs the same steps on the tiny SD-1.5-shaped model (CPU is fine): the test suite runs it so
this script cannot rot before a GPU is lent. Writes ``gpu-check.json`` (figures, per-step seconds and errors)
and ``gpu-check.log`` into ``--out``. Exit 0: every step passed; 1: a step failed (the JSON says which);
2: the device is not there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.common import make_concept, synthetic_photos  # noqa: E402
from benchmarks.fullsize import build_sd15  # noqa: E402
from training.artifact import load_artifact, save_artifact  # noqa: E402
from training.compose import Composer, ConceptUse  # noqa: E402
from training.config import default_config  # noqa: E402
from training.generate import GenerationRequest, generate, upscale  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.tiny import build_tiny_pipeline  # noqa: E402

GIB = 2**30
PROFILES: dict[str, dict[str, Any]] = {
    # steps, slice, resolution, photos, generate side and steps; bench flags; the whole run's budget (s)
    "full": {"train_steps": 120, "slice_steps": 40, "resolution": 512, "photos": 8, "side": 512, "gen_steps": 25,
             "bench": ["--full-size"], "budget_s": 480},
    "tiny": {"train_steps": 6, "slice_steps": 2, "resolution": 64, "photos": 4, "side": 64, "gen_steps": 2,
             "bench": ["--smoke", "--only", "sizes"], "budget_s": 480},
}
log = logging.getLogger("gpu-check")


class Check:
    def __init__(self, out: Path, device: torch.device, profile: str):
        self.out, self.device, self.t0 = out, device, time.monotonic()
        self.report: dict[str, Any] = {"profile": profile, "device": str(device), "steps": {}, "figures": {},
                                       "ok": True}

    def step(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> Any:
        """Run one step: time it, record its figures or its error, keep going either way."""
        log.info("step %s ...", name)
        self._reset_peak()
        t = time.perf_counter()
        try:
            figures = fn() or {}
            ok, error = True, None
        except Exception as exc:  # a failed step is recorded and the next one still runs
            log.error("step %s failed: %s\n%s", name, exc, traceback.format_exc())
            figures, ok, error = {}, False, f"{type(exc).__name__}: {exc}"
        seconds = round(time.perf_counter() - t, 3)
        entry = {"ok": ok, "seconds": seconds, "error": error, "peak_gib": self._peak()}
        self.report["steps"][name] = entry
        self.report["figures"].update({f"{name}.{k}": v for k, v in figures.items()})
        self.report["ok"] &= ok
        log.info("step %s %s in %.2fs %s", name, "ok" if ok else "FAILED", seconds, figures or error or "")
        return ok

    def left(self, budget: float) -> float:
        return budget - (time.monotonic() - self.t0)

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def _peak(self) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / GIB, 2)

    def write(self) -> Path:
        self.report["total_seconds"] = round(time.monotonic() - self.t0, 2)
        path = self.out / "gpu-check.json"
        path.write_text(json.dumps(self.report, indent=1))
        return path


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "xformers_installed": bool(importlib.util.find_spec("xformers"))}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                   capability=f"{props.major}.{props.minor}")
    return env


def run(profile: str, device: torch.device, out: Path, bench: bool) -> int:
    cfg = PROFILES[profile]
    check = Check(out, device, profile)
    check.report["environment"] = _environment(device)
    state: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        if profile == "full":
            pipe = build_sd15(device)  # fp16 on CUDA, the worker's optimisations
        else:
            pipe = build_tiny_pipeline().to(device)
            pipe.set_progress_bar_config(disable=True)
        state["pipe"], state["composer"] = pipe, Composer(pipe, slots=8)
        procs = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
        return {"dtype": str(pipe.unet.dtype), "attention": procs,
                "xformers_used": any("XFormers" in p for p in procs),
                "unet_params_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 1)}

    def train() -> dict[str, Any]:
        pipe = state["pipe"]
        config = default_config("face", steps=cfg["train_steps"], resolution=cfg["resolution"])
        images = synthetic_photos(cfg["photos"], cfg["resolution"])
        checkpoint: bytes | None = None
        slices: list[float] = []
        while True:  # one Trainer per slice, resumed from the last checkpoint, as the worker does
            t = time.perf_counter()
            trainer = Trainer(pipe, images, config, base_model_id="gpu-check")
            try:
                if checkpoint is not None:
                    trainer.load_state_dict(checkpoint)
                trainer.run(max_steps=cfg["slice_steps"])
                slices.append(round(time.perf_counter() - t, 3))
                if trainer.done:
                    state["face"] = save_artifact(trainer.artifact())
                    break
                checkpoint = trainer.state_dict()
            finally:
                trainer.close()
        return {"steps": config.steps, "slices": len(slices), "slice_seconds": slices,
                "checkpoint_bytes": len(checkpoint or b""), "artifact_bytes": len(state["face"]),
                "steps_per_s": round(config.steps / sum(slices), 2)}

    def images() -> dict[str, Any]:
        pipe, composer = state["pipe"], state["composer"]
        face = ConceptUse("gpu-check/face", load_artifact(state["face"]))
        kit = ConceptUse("gpu-check/kit", make_concept(pipe, kind="kit", method="lora", seed=2))
        req = GenerationRequest(prompt=f"{face.artifact.trigger} in a {kit.artifact.trigger} shirt at the stadium",
                                concepts=[face, kit], seed=1, count=4, width=cfg["side"], height=cfg["side"],
                                steps=cfg["gen_steps"], guidance=7.0)
        t = time.perf_counter()
        (result,) = generate(pipe, composer, [req], safety_checker=False)
        seconds = time.perf_counter() - t
        for i, g in enumerate(result):
            (out / f"image-{i}.png").write_bytes(g.png)
        state["image"] = result[0].image
        assert len(result) == 4 and all(g.image.size == (cfg["side"], cfg["side"]) for g in result)
        return {"count": len(result), "seconds": round(seconds, 3), "png_bytes": sum(len(g.png) for g in result)}

    def upscale_one() -> dict[str, Any]:
        g = upscale(state["pipe"], state["image"], prompt="at the stadium", seed=1, safety_checker=False)
        (out / "upscaled.png").write_bytes(g.png)
        assert g.image.size == (2 * cfg["side"], 2 * cfg["side"])
        return {"size": list(g.image.size)}

    def run_bench() -> dict[str, Any]:
        state.clear()  # the bench builds its own pipeline: free this one first
        if device.type == "cuda":
            torch.cuda.empty_cache()
        path = out / "bench.json"
        timeout = max(60.0, check.left(cfg["budget_s"]))
        cmd = [sys.executable, "-m", "kitbooth.cli", "bench", "--device", device.type, *cfg["bench"], "--json", str(path)]
        with (out / "gpu-check.log").open("a") as logf:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            raise RuntimeError(f"kitbooth bench exited with status {proc.returncode} (see gpu-check.log)")
        return {k: v for k, v in json.loads(path.read_text()).items() if v is not None}

    for name, fn in (("build", build), ("train", train), ("generate", images), ("upscale", upscale_one)):
        if not check.step(name, fn):
            break  # each step needs the one before
    if bench:
        check.step("bench", run_bench)
    path = check.write()
    log.info("wrote %s (%s)", path, "all steps passed" if check.report["ok"] else "a step FAILED")
    return 0 if check.report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="folder for the JSON, the log, images")
    p.add_argument("--no-bench", action="store_true", help="skip `kitbooth bench`")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: CUDA not available on this machine: run it on the GPU host (or --profile tiny "
              "--device cpu to check the script itself).", file=sys.stderr)
        return 2
    if args.profile == "full" and args.device != "cuda":
        print("gpu-check: the full profile needs --device cuda (use --profile tiny on a CPU).", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(args.out / "gpu-check.log", mode="w")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[handler, logging.StreamHandler()])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing to download
    return run(args.profile, torch.device(args.device), args.out, bench=not args.no_bench)


if __name__ == "__main__":
    sys.exit(main())
