"""GPU mode: real SD 1.5 architecture with random weights (no download), in fp16 on CUDA.

The UNet, VAE, text encoder and scheduler are built from SD 1.5's published configs (``training.models.SD15_*``,
the same ones a single-file checkpoint loads with), the tokenizer is SD 1.5's exact one
(``training.tiny.write_clip_tokenizer``), and the pipeline gets the worker's own optimisations (SDPA,
channels_last, xformers when usable) and scheduler (DPM-Solver++). Random weights change no timing or memory.

Figures (all on the resident pipeline, like the worker):
- ``face_train_seconds``: 10 photos (512²) → ready ``.safetensors`` at the face default (pivotal, 500 steps).
- ``train_peak_gib``: peak allocated CUDA memory during that training.
- ``unet_its``: UNet calls per second at 512² batch 2 (one CFG step) with a face + a kit composed.
- ``generate_4x25_seconds``: one request of 4 images, 512², 25 steps, face + kit, decode + PNG included.
- ``generate_peak_gib``: peak allocated CUDA memory during that generation.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from benchmarks.common import Report, make_concept, median_time, sync, synthetic_photos

GIB = 2**30


def build_sd15(device: Any, dtype: Any = None) -> Any:
    """SD 1.5 (random weights) on ``device``: fp16 on CUDA, fp32 elsewhere."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from training import models
    from training.pipeline_calls import use_dpm_solver
    from training.tiny import write_clip_tokenizer

    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    strip = {"_class_name", "architectures", "model_type", "torch_dtype"}
    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the device (fast on a GPU)
        unet = UNet2DConditionModel.from_config({k: v for k, v in models.SD15_UNET.items() if k not in strip})
        vae = AutoencoderKL.from_config({k: v for k, v in models.SD15_VAE.items() if k not in strip})
        text = {k: v for k, v in models.SD15_TEXT.items() if k not in strip}
        text.update(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))
    scheduler = PNDMScheduler.from_config({k: v for k, v in models.SD15_SCHEDULER.items() if k != "_class_name"})
    pipe = StableDiffusionPipeline(
        vae=vae.to(dtype), text_encoder=text_encoder.to(dtype), tokenizer=tokenizer, unet=unet.to(dtype),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    optimise = getattr(models, "_optimise", None)  # the worker's own device set-up, when available
    if optimise is not None:
        optimise(pipe, device)
    use_dpm_solver(pipe)
    return pipe


def _peak_reset(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: Any) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GIB


def run(report: Report, *, pipe: Any, composer: Any, device: Any, repeats: int, train_steps: int | None = None,
        photos: int = 10) -> None:
    from training.artifact import save_artifact
    from training.compose import ConceptUse
    from training.config import default_config
    from training.generate import GenerationRequest, generate
    from training.loop import Trainer

    face = ConceptUse("bench/face", make_concept(pipe, kind="face", method="pivotal", seed=1))
    kit = ConceptUse("bench/kit", make_concept(pipe, kind="kit", method="lora", seed=2))

    # UNet it/s with face + kit composed (steady state: adapters resident after the first composition)
    unet = pipe.unet
    lat = torch.randn(2, 4, 64, 64, device=device, dtype=unet.dtype)
    enc = torch.randn(2, 77, 768, device=device, dtype=unet.dtype)
    t = torch.tensor([500, 500], device=device)
    with composer.compose([[face, kit]]), torch.no_grad():
        t_step = median_time(lambda: unet(lat, t, enc, return_dict=False), repeats=max(repeats, 20),
                             warmup=3, device=device)
    report.set("unet_its", round(1.0 / t_step, 2))

    # generate 4 × 512² × 25 steps
    req = GenerationRequest(prompt=f"{face.artifact.trigger} in a {kit.artifact.trigger} shirt at the stadium",
                            concepts=[face, kit], seed=1, count=4, width=512, height=512, steps=25, guidance=7.0)
    generate(pipe, composer, [req], safety_checker=False)  # warm-up
    _peak_reset(device)
    gen_s = median_time(lambda: generate(pipe, composer, [req], safety_checker=False), repeats=max(1, repeats // 2),
                        warmup=0, device=device)
    report.set("generate_4x25_seconds", round(gen_s, 3))
    report.set("generate_peak_gib", None if _peak(device) is None else round(_peak(device), 2))

    # face training: photos -> ready artifact at the face default
    cfg = default_config("face") if train_steps is None else default_config("face", steps=train_steps)
    images = synthetic_photos(photos, cfg.resolution)
    composer.evict_all()  # as the worker's lane does not hold other work during a slice
    _peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    with Trainer(pipe, images, cfg, base_model_id="bench") as trainer:
        trainer.run()
        data = save_artifact(trainer.artifact())
    sync(device)
    train_s = time.perf_counter() - t0
    peak = _peak(device)
    report.set("face_train_seconds", round(train_s, 2))
    report.set("train_peak_gib", None if peak is None else round(peak, 2))
    report.note(f"full size: UNet 512² batch 2 with face + kit {t_step * 1e3:.2f} ms ({1 / t_step:.1f} it/s); "
                f"generate 4×512² 25 steps {gen_s:.2f} s; face training {cfg.steps} steps at {cfg.resolution}² "
                f"batch {cfg.batch_size} from {photos} photos {train_s:.1f} s ({cfg.steps / train_s:.1f} steps/s), "
                f"artifact {len(data):,} B" + (f"; peaks: train {peak:.2f} GiB" if peak is not None else ""))
