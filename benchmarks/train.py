"""``train_step_ratio``: our trainer's mean step time / the diffusers example loop's, same model, batch, resolution.

Ours is ``training.loop.Trainer`` at the face default (pivotal: the first ``ti_fraction`` of the steps train the
TI vectors, the rest a UNet LoRA around the frozen vectors), so its mean step time over a default run is
``f·TI-step + (1-f)·LoRA-step + latent-cache time / steps``.

The baseline re-creates diffusers' example loops on a separate copy of the same pipeline, phase for phase:
``textual_inversion.py`` (placeholder tokens added to the tokenizer, embedding table resized, the whole table
trained and the other rows restored after each step) then ``train_text_to_image_lora.py`` (``unet.add_adapter``
with a LoRA config). On EVERY step both do what those scripts do: tokenize the captions, VAE-encode the pixels
(``latent_dist.sample()``), text-encode, UNet forward, min-SNR-weighted MSE, backward, clip, AdamW step. No
latent or text caching. (Pixels are prepared once, which only helps the baseline.)
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks.common import Report, sync, synthetic_photos


class _DiffusersExampleLoop:
    """The diffusers TI + LoRA example loops (see the module docstring) on their own pipeline copy."""

    def __init__(self, pipe: Any, photos: list[Any], cfg: Any, device: Any):
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        from training.data import expand_captions, images_to_tensor, square_resize

        self.pipe, self.cfg, self.device = pipe, cfg, device
        tok, te, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        self.placeholders = [f"<bench-{i}>" for i in range(cfg.num_vectors)]
        tok.add_tokens(self.placeholders)
        ids = tok.convert_tokens_to_ids(self.placeholders)
        te.resize_token_embeddings(len(tok))
        init = tok(cfg.init_word, add_special_tokens=False).input_ids
        emb = te.get_input_embeddings().weight
        with torch.no_grad():
            for i in ids:
                emb[i] = emb[init].mean(0)
        self.orig_embeds = emb.detach().clone()
        self.index_no_updates = torch.ones(len(tok), dtype=torch.bool)
        self.index_no_updates[ids] = False
        vae.requires_grad_(False)
        unet.requires_grad_(False)
        te.requires_grad_(False)
        te.get_input_embeddings().requires_grad_(True)
        unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                    target_modules=list(cfg.unet_targets)))
        self.lora_params = [p for p in unet.parameters() if p.requires_grad]
        self.opt_ti = torch.optim.AdamW([te.get_input_embeddings().weight], lr=cfg.lr_ti, weight_decay=1e-2)
        self.opt_lora = torch.optim.AdamW(self.lora_params, lr=cfg.lr_unet, weight_decay=1e-2)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        acp = self.noise_scheduler.alphas_cumprod
        self.snr = acp / (1 - acp)
        res = cfg.resolution
        pixels = images_to_tensor([square_resize(im, res) for im in photos])
        self.pixels = torch.cat([pixels, pixels.flip(3)])  # the examples' random flip, prepared once
        trigger = " ".join(self.placeholders)
        self.captions = [c.replace("{}", trigger) for c in expand_captions(None, 1, cfg.caption_templates)[0]]
        self.gen = torch.Generator().manual_seed(0)

    def step(self, phase: str) -> float:
        pipe, cfg, dev = self.pipe, self.cfg, self.device
        te, unet, vae = pipe.text_encoder, pipe.unet, pipe.vae
        g, bs = self.gen, cfg.batch_size
        idx = torch.randint(0, len(self.pixels), (bs,), generator=g)
        caps = [self.captions[int(i)] for i in torch.randint(0, len(self.captions), (bs,), generator=g)]
        input_ids = pipe.tokenizer(caps, padding="max_length", truncation=True,
                                   max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        pixel_values = self.pixels[idx].to(dev, vae.dtype)
        with torch.no_grad():
            latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bs,), device=dev).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        if phase == "ti":
            enc = te(input_ids.to(dev))[0]
            params, opt = [te.get_input_embeddings().weight], self.opt_ti
        else:
            with torch.no_grad():  # the LoRA example: a frozen text encoder, still run every step
                enc = te(input_ids.to(dev))[0]
            params, opt = self.lora_params, self.opt_lora
        pred = unet(noisy, t, enc).sample
        snr = self.snr.to(dev)[t]
        w = torch.clamp(snr, max=cfg.snr_gamma) / snr
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        loss = (loss * w).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad()
        if phase == "ti":  # textual_inversion.py: keep every other row of the table as it was
            with torch.no_grad():
                w_ = te.get_input_embeddings().weight
                w_[self.index_no_updates] = self.orig_embeds[self.index_no_updates]
        return float(loss.detach())


def run(report: Report, *, load_pipe: Any, device: Any, resolution: int, repeats: int, images: int = 4,
        chunk: int = 4) -> None:
    """Interleaved: a chunk of our steps, then a chunk of the baseline's in the same phase, so both see the same
    machine load (this box is shared). Step times are the gaps between consecutive progress callbacks; the
    first call (adapter attach + latent cache) is reported apart and amortised over a default run."""
    from training.config import default_config
    from training.loop import Trainer

    default = default_config("face")
    f = default.ti_fraction
    per_phase = repeats * chunk
    steps = 2 * per_phase + 2
    cfg = default_config("face", resolution=resolution, steps=steps, ti_fraction=(per_phase + 1) / steps)
    photos = synthetic_photos(images, resolution)
    stamps: list[float] = []

    def progress(_p: Any) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    trainer = Trainer(load_pipe(), photos, cfg, progress=progress)
    base = _DiffusersExampleLoop(load_pipe(), photos, cfg, device)
    ours: dict[str, list[float]] = {"ti": [], "lora": []}
    theirs: dict[str, list[float]] = {"ti": [], "lora": []}
    try:
        sync(device)
        t0 = time.perf_counter()
        trainer.run(max_steps=1)  # attach + latent cache + the first step
        first = time.perf_counter() - t0
        base.step("ti")  # warm-up
        while not trainer.done:
            phase = "ti" if trainer.step < cfg.ti_steps else "lora"
            n = min(chunk + 1, cfg.ti_steps - trainer.step) if phase == "ti" else chunk + 1
            stamps.clear()
            trainer.run(max_steps=n)
            ours[phase] += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
            for _ in range(n):
                sync(device)
                t = time.perf_counter()
                base.step(phase)
                sync(device)
                theirs[phase].append(time.perf_counter() - t)
    finally:
        trainer.close()
    t_ti, t_lora = statistics.median(ours["ti"]), statistics.median(ours["lora"])
    b_ti, b_lora = statistics.median(theirs["ti"]), statistics.median(theirs["lora"])
    once = max(0.0, first - t_ti)
    mean_ours = f * t_ti + (1 - f) * t_lora + once / default.steps
    mean_base = f * b_ti + (1 - f) * b_lora
    report.set("train_step_ratio", round(mean_ours / mean_base, 3))
    report.note(f"train: face pivotal ({f:.0%} TI steps, then LoRA), {resolution}² batch {cfg.batch_size}, {images} "
                f"photos; mean step ours {mean_ours * 1e3:.1f} ms (TI {t_ti * 1e3:.1f}, LoRA {t_lora * 1e3:.1f}; "
                f"attach + latent cache {once * 1e3:.0f} ms once per run, amortised over {default.steps} steps) vs "
                f"diffusers example loop {mean_base * 1e3:.1f} ms (TI {b_ti * 1e3:.1f}, LoRA {b_lora * 1e3:.1f})")
