"""``swap_ratio_ti``, ``swap_ratio_lora``: compose enter+exit for a face + a kit / one denoising step.

One denoising step = one UNet call at the generation size with classifier-free guidance's batch of 2.
``swap_ratio_ti``: a TI face + a TI kit (slot pool: two ``index_copy_`` and a prompt rewrite, then zeroing).
``swap_ratio_lora``: a pivotal face (TI + UNet LoRA) + a LoRA kit, steady state (both adapters resident in the
composer's LRU after the first use, which is the warm-up). Beside them, diffusers' own loaders for the same
concepts exported with ``training.formats.export(..., "diffusers")``: ``load_textual_inversion`` ×2 +
``unload_textual_inversion``, and ``load_lora_weights`` ×2 + ``set_adapters`` + ``unload_lora_weights``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Report, make_concept, median_time


def _denoise_step(pipe: Any, size: int, device: Any, repeats: int) -> float:
    unet = pipe.unet
    lat = torch.randn(2, unet.config.in_channels, size // 8, size // 8, device=device, dtype=unet.dtype)
    enc = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
    t = torch.tensor([500, 500], device=device)

    def step() -> None:
        with torch.no_grad():
            unet(lat, t, enc, return_dict=False)

    return median_time(step, repeats=repeats, warmup=2, device=device)


def _compose(composer: Any, uses: list[Any], repeats: int, device: Any) -> float:
    def swap() -> None:
        with composer.compose([uses]) as comp:
            comp.rewrite(0, "a photo of " + " ".join(u.artifact.trigger for u in uses))

    return median_time(swap, repeats=repeats, warmup=2, device=device)


def _diffusers_ti(pipe: Any, files: list[tuple[Path, str]], repeats: int, device: Any) -> float:
    def swap() -> None:
        for path, token in files:
            pipe.load_textual_inversion(str(path), token=token)
        pipe.unload_textual_inversion()

    return median_time(swap, repeats=repeats, warmup=1, device=device)


def _diffusers_lora(pipe: Any, files: list[Path], repeats: int, device: Any) -> float:
    def swap() -> None:
        names = []
        for i, path in enumerate(files):
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"bench{i}")
            names.append(f"bench{i}")
        pipe.set_adapters(names, [1.0] * len(names))
        pipe.unload_lora_weights()

    return median_time(swap, repeats=repeats, warmup=1, device=device)


def run(report: Report, *, pipe: Any, composer: Any, fresh_pipe: Any, device: Any, size: int, repeats: int,
        diffusers_repeats: int) -> None:
    from training.compose import ConceptUse
    from training.formats import export

    step = _denoise_step(pipe, size, device, repeats)
    face_ti = make_concept(pipe, kind="face", method="ti", seed=1)
    kit_ti = make_concept(pipe, kind="kit", method="ti", seed=2, num_vectors=1)
    face_pti = make_concept(pipe, kind="face", method="pivotal", seed=3)
    kit_lora = make_concept(pipe, kind="kit", method="lora", seed=4)
    ti = _compose(composer, [ConceptUse("bench/face-ti", face_ti), ConceptUse("bench/kit-ti", kit_ti)], repeats,
                  device)
    lora = _compose(composer, [ConceptUse("bench/face-pti", face_pti), ConceptUse("bench/kit-lora", kit_lora)],
                    repeats, device)
    report.set("swap_ratio_ti", round(ti / step, 4))
    report.set("swap_ratio_lora", round(lora / step, 4))

    d_ti = d_lora = None
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        ti_files, lora_files = [], []
        for name, art in (("face-ti", face_ti), ("kit-ti", kit_ti)):
            (path,) = export(art, "diffusers", Path(tmp) / name)
            ti_files.append((path, f"<{name}>"))
        for name, art in (("face-pti", face_pti), ("kit-lora", kit_lora)):
            paths = export(art, "diffusers", Path(tmp) / name)
            lora_files += [p for p in paths if "lora" in p.name]
        other = fresh_pipe()
        d_ti = _diffusers_ti(other, ti_files, diffusers_repeats, device)
        d_lora = _diffusers_lora(other, lora_files, diffusers_repeats, device)
    report.note(f"swap: one denoising step (UNet, {size}², batch 2) {step * 1e3:.1f} ms; compose enter+exit "
                f"face+kit TI {ti * 1e3:.2f} ms, pivotal face + LoRA kit {lora * 1e3:.2f} ms (adapters resident)")
    small = _denoise_step(pipe, 64, device, repeats)
    report.note(f"swap: against a 64² step ({small * 1e3:.1f} ms, the cheapest UNet call) the same swaps are "
                f"TI {ti / small:.3f} and LoRA {lora / small:.3f} steps")
    report.note(f"swap: diffusers' own load+unload, same files: TI {d_ti * 1e3:.0f} ms "
                f"(= {d_ti / step:.1f} steps), LoRA {d_lora * 1e3:.0f} ms (= {d_lora / step:.1f} steps)")
