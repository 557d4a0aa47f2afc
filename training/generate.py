"""Generation: several users' requests in one pipeline call, with their concepts composed per request.

* Requests that share size, steps, guidance (and img2img strength) run in **one** pipeline call; each request's
  prompt is repeated per image, each image has its own seed (``seed + k``) and its own CPU generator, so an
  image equals the same request generated alone with that seed (within float tolerance of batching).
* Prompts are built by :func:`training.generation_request.build_request_prompt` and encoded here (not by the
  pipeline), so each request's concepts, TI slots and text-encoder LoRA apply to its own rows.
* Progress every step and a cheap latent preview (:mod:`training.preview`) every ``preview_every_s``.
* The safety checker runs when one is loaded (or one is passed); flagged images are blacked out, ``nsfw=True``.
* Every PNG carries A1111's ``parameters`` and the "AI generated" mark (:mod:`training.png_metadata`).
* Optional ×2 latent upscaler (``stabilityai/sd-x2-latent-upscaler``) for requests with ``upscale=True``; when
  none is configured those requests come back at base size with ``upscaled=False`` (logged, never an error).
* ``vary`` (:func:`training.generation_request.vary`): img2img from a previous image. ``upscale``: the latent
  upscaler on one image, or Lanczos ×2 when none is configured.

The request types are re-exported here: they are this module's signature.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from kitbooth import __version__
from kitbooth.errors import JobCancelled
from training.compose import Composer, Composition
from training.generation_request import (
    GeneratedImage,
    GenerationRequest,
    build_request_prompt,
    plain_text,
    vary,
)
from training.pipeline_calls import (
    check_safety,
    decode,
    encode_text,
    img2img,
    initial_noise,
    latent_upscale,
    model_name,
    use_dpm_solver,
)
from training.png_metadata import a1111_parameters, png_bytes
from training.preview import grid, latents_to_rgb
from training.prompts import BuiltPrompt

__all__ = ["GenerationRequest", "GeneratedImage", "vary", "generate", "upscale"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, "Image.Image | None"], None]
RequestProgress = Callable[[int, int, int, "Image.Image | None"], None]
_LATENT_UPSCALER = "Latent (sd-x2-latent-upscaler)"


def _groups(requests: list[GenerationRequest], composer: Composer) -> list[list[int]]:
    """Request indices per pipeline call: equal batch keys, split where the TI slot pool would run out."""
    by_key: dict[tuple, list[list[int]]] = {}
    for i, r in enumerate(requests):
        buckets = by_key.setdefault(r.batch_key(), [[]])
        cur = buckets[-1]
        if cur and not composer.can_batch([requests[j].concepts for j in [*cur, i]]):
            cur = []
            buckets.append(cur)
        cur.append(i)
    return [g for buckets in by_key.values() for g in buckets]


def generate(
    pipe: Any,
    composer: Composer,
    requests: Sequence[GenerationRequest],
    *,
    progress: Progress | None = None,
    request_progress: RequestProgress | None = None,
    preview_every_s: float = 1.0,
    should_stop: Callable[[], bool] | None = None,
    safety_checker: Any = None,
    upscaler: Any = None,
    upscale_steps: int = 20,
    model: str | None = None,
) -> list[list[GeneratedImage]]:
    """Generate every request, batching compatible requests into one pipeline call.

    ``progress(step, total, preview)`` is called after every denoising step (over all calls); ``preview`` is a
    grid of the whole batch's cheap previews (one row per request) at most every ``preview_every_s`` seconds,
    else ``None``. ``request_progress(request_index, step, total, preview)`` gives each request its own grid.
    ``should_stop()`` is checked every step; when true :class:`JobCancelled` is raised (the pipeline is
    restored). ``safety_checker``: ``None`` = the pipeline's own when loaded, ``False`` = off, or a
    callable(images) -> flags / a safety-checker module. Returns one list of images per request, in order.
    """
    requests = list(requests)
    if not requests:
        return []
    if composer.pipe is not pipe:
        raise ValueError("the composer belongs to another pipeline")
    use_dpm_solver(pipe)
    pipe.set_progress_bar_config(disable=True)
    groups = _groups(requests, composer)
    total = sum(requests[g[0]].denoising_steps for g in groups)
    done = 0
    name = model or model_name(pipe)
    results: list[list[GeneratedImage]] = [[] for _ in requests]
    for g in groups:
        if should_stop is not None and should_stop():
            raise JobCancelled("cancelled")
        reqs = [requests[i] for i in g]
        on_step = _step_callback(reqs, g, done=done, total=total, progress=progress,
                                 request_progress=request_progress, preview_every_s=preview_every_s,
                                 should_stop=should_stop)
        t0 = time.perf_counter()
        with composer.compose([r.concepts for r in reqs]) as comp:
            built = [build_request_prompt(r, pipe.tokenizer) for r in reqs]
            latents = _denoise(pipe, comp, reqs, built, on_step)
        t_denoise = time.perf_counter() - t0
        outs = _finish(pipe, reqs, built, latents, safety_checker=safety_checker, upscaler=upscaler,
                       upscale_steps=upscale_steps, model=name)
        log.info("generated %d images for %d requests in %.2f s (denoise %.2f s)", len(latents), len(reqs),
                 time.perf_counter() - t0, t_denoise)
        for i, out in zip(g, outs, strict=True):
            results[i] = out
        done += reqs[0].denoising_steps
    return results


def _rows(reqs: list[GenerationRequest]) -> list[int]:
    """The request each image row of a call belongs to (a request's ``count`` images are adjacent)."""
    return [i for i, r in enumerate(reqs) for _ in range(r.count)]


def _step_callback(reqs: list[GenerationRequest], global_idx: list[int], *, done: int, total: int,
                   progress: Progress | None, request_progress: RequestProgress | None, preview_every_s: float,
                   should_stop: Callable[[], bool] | None) -> Callable[..., dict[str, Any]]:
    """diffusers' ``callback_on_step_end``: cancel between steps, count steps over all calls, and make previews
    only every ``preview_every_s`` (a preview costs a little on every step it is made)."""
    rows = _rows(reqs)
    cols = max(r.count for r in reqs)
    last_preview = [-1e9]

    def on_step(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        if should_stop is not None and should_stop():
            raise JobCancelled("cancelled")
        if progress is None and request_progress is None:
            return kw
        now = time.monotonic()
        smalls = None
        if now - last_preview[0] >= preview_every_s:
            last_preview[0] = now
            smalls = latents_to_rgb(kw["latents"][-len(rows):])
        step = done + i + 1
        if progress is not None:
            if smalls is not None:
                pad: list[Image.Image] = []
                for ri in range(len(reqs)):  # one row per request
                    mine = [smalls[j] for j, rr in enumerate(rows) if rr == ri]
                    pad += mine + [Image.new("RGB", mine[0].size)] * (cols - len(mine))
                progress(step, total, grid(pad, cols=cols, cell=128))
            else:
                progress(step, total, None)
        if request_progress is not None:
            for ri in range(len(reqs)):
                img = grid([smalls[j] for j, rr in enumerate(rows) if rr == ri], cell=128) if smalls else None
                request_progress(global_idx[ri], step, total, img)
        return kw

    return on_step


def _denoise(pipe: Any, comp: Composition, reqs: list[GenerationRequest], built: list[BuiltPrompt],
             on_step: Callable[..., dict[str, Any]]) -> torch.Tensor:
    """One pipeline call for the whole group, inside its composition; returns the final latents."""
    r0 = reqs[0]
    rows = _rows(reqs)
    seeds = [s for r in reqs for s in r.seeds]
    comp.set_rows(text=range(len(reqs)))
    pos = encode_text(pipe, [comp.rewrite(i, b.text) for i, b in enumerate(built)])
    neg = encode_text(pipe, [comp.rewrite(i, b.negative) for i, b in enumerate(built)])
    index = torch.tensor(rows, device=pos.device)
    pos, neg = pos.index_select(0, index), neg.index_select(0, index)
    comp.set_rows(unet=rows)
    common = dict(
        prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=r0.schedule_steps,
        guidance_scale=r0.guidance, output_type="latent", callback_on_step_end=on_step,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    with torch.no_grad():
        if r0.init_image is not None:
            gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            images = [reqs[i].init_image.convert("RGB").resize((r0.width, r0.height)) for i in rows]
            out = img2img(pipe)(image=images, strength=r0.strength, generator=gens, **common)
        else:
            shape = (1, pipe.unet.config.in_channels, r0.height // pipe.vae_scale_factor,
                     r0.width // pipe.vae_scale_factor)
            latents = torch.cat([initial_noise(s, shape) for s in seeds]).to(pipe.unet.device, pos.dtype)
            out = pipe(height=r0.height, width=r0.width, latents=latents, **common)
    return out.images


def _finish(pipe: Any, reqs: list[GenerationRequest], built: list[BuiltPrompt], latents: torch.Tensor, *,
            safety_checker: Any, upscaler: Any, upscale_steps: int, model: str) -> list[list[GeneratedImage]]:
    """Decode, upscale where asked, safety-check and write each PNG with its metadata."""
    rows = _rows(reqs)
    seeds = [s for r in reqs for s in r.seeds]
    pil = decode(pipe, latents)
    upscaled = [False] * len(rows)
    want_up = [j for j, ri in enumerate(rows) if reqs[ri].upscale]
    if want_up and upscaler is None:
        log.info("upscale requested but no upscaler is configured: returning base size")
    elif want_up:
        for j in want_up:
            text = plain_text(built[rows[j]].text)
            pil[j] = latent_upscale(upscaler, latents[j : j + 1], text, seeds[j], upscale_steps)
            upscaled[j] = True
    pil, flags = check_safety(pipe, pil, safety_checker)
    results: list[list[GeneratedImage]] = [[] for _ in reqs]
    for j, ri in enumerate(rows):
        r, b = reqs[ri], built[ri]
        extra: dict[str, Any] = {}
        if r.init_image is not None:
            extra["Denoising strength"] = r.strength
        if upscaled[j]:
            extra.update({"Hires upscale": 2, "Hires upscaler": _LATENT_UPSCALER})
        params = a1111_parameters(b.text, b.negative, steps=r.schedule_steps, cfg=r.guidance, seed=seeds[j],
                                  size=pil[j].size, model=model, extra=extra)
        results[ri].append(GeneratedImage(
            image=pil[j], seed=seeds[j], prompt=b.text, negative=b.negative, png=png_bytes(pil[j], params),
            nsfw=flags[j], upscaled=upscaled[j], parameters=params, notice=b.notice,
        ))
    return results


def upscale(pipe: Any, image: Image.Image, *, upscaler: Any = None, prompt: str = "", seed: int = 0,
            steps: int = 20, safety_checker: Any = None, model: str | None = None) -> GeneratedImage:
    """×2 one image: the latent upscaler when configured, else Lanczos resampling (recorded in the PNG)."""
    image = image.convert("RGB")
    text = plain_text(prompt)
    if upscaler is None:
        out, method = image.resize((image.width * 2, image.height * 2), Image.LANCZOS), "Lanczos"
    else:
        vae = pipe.vae
        with torch.no_grad():
            t = pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
            lat = vae.encode(t).latent_dist.mode() * vae.config.scaling_factor
        out, method = latent_upscale(upscaler, lat, text, seed, steps), _LATENT_UPSCALER
    (out,), (flag,) = check_safety(pipe, [out], safety_checker)
    params = (f"{text}\nUpscale: 2, Upscaler: {method}, Seed: {seed}, Size: {out.width}x{out.height}, "
              f"Model: {model or model_name(pipe)}, Version: KitBooth {__version__}")
    return GeneratedImage(image=out, seed=seed, prompt=text, png=png_bytes(out, params), nsfw=flag,
                          upscaled=True, parameters=params)
