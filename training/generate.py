"""Generation: several users' requests in one pipeline call, with their concepts composed per request.

* Requests that share size, steps, guidance (and img2img strength) run in **one** pipeline call; each request's
  prompt is repeated per image, each image has its own seed (``seed + k``) and its own CPU generator, so an
  image equals the same request generated alone with that seed (within float tolerance of batching).
* Prompts are built by :func:`training.prompts.build_prompt` (face trigger + kit + user text + style, default
  negative, explicit truncation) and encoded here (not by the pipeline), so each request's concepts, TI slots
  and text-encoder LoRA apply to its own rows.
* DPM-Solver++ (2M, Karras sigmas) is installed once on the pipeline from its own scheduler config.
* Progress every step and a cheap latent preview (:mod:`training.preview`) every ``preview_every_s``.
* The safety checker runs when one is loaded (or one is passed); flagged images are blacked out, ``nsfw=True``.
* Every PNG carries A1111's ``parameters`` text chunk plus an "AI generated" mark (``ai_generated``,
  ``Software``, the IPTC digital source type ``trainedAlgorithmicMedia`` as text and as XMP).
* Optional ×2 latent upscaler (``stabilityai/sd-x2-latent-upscaler``) for requests with ``upscale=True``; when
  none is configured those requests come back at base size with ``upscaled=False`` (logged, never an error).
* ``vary``: img2img from a previous image at ``strength`` (default 0.35) with a new seed — same composition,
  new details. ``upscale``: the latent upscaler on one image, or Lanczos ×2 when none is configured.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from kitbooth import __version__
from kitbooth.errors import InvalidInput, JobCancelled
from training.compose import Composer, ConceptUse
from training.preview import grid, latents_to_rgb
from training.prompts import BuiltPrompt, build_prompt

log = logging.getLogger(__name__)

SAMPLER_NAME = "DPM++ 2M Karras"
IPTC_TRAINED_ALGORITHMIC = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MAX_SEED = 2**63 - 16

Progress = Callable[[int, int, "Image.Image | None"], None]
RequestProgress = Callable[[int, int, int, "Image.Image | None"], None]


@dataclass
class GenerationRequest:
    """One user's request: ``count`` images of ``prompt`` with their concepts (face, kit, style)."""

    prompt: str
    concepts: list[ConceptUse] = field(default_factory=list)
    seed: int = 0
    count: int = 1
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    negative_prompt: str | None = None
    kit_words: str | None = None
    style_words: str | None = None
    init_image: Image.Image | None = None  # img2img ("vary") from this image
    strength: float = 0.35  # img2img strength
    upscale: bool = False  # ×2 latent upscaler, when one is configured

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 4:
            raise InvalidInput("Ask for 1 to 4 images.")
        if not (0 <= self.seed <= MAX_SEED):
            raise InvalidInput("The seed must be a non-negative 63-bit number.")
        for v in (self.width, self.height):
            if v % 8 or not 64 <= v <= 2048:
                raise InvalidInput("Width and height must be multiples of 8 between 64 and 2048.")
        if not 1 <= self.steps <= 150:
            raise InvalidInput("Steps must be between 1 and 150.")
        if not 0.0 <= self.guidance <= 30.0:
            raise InvalidInput("Guidance must be between 0 and 30.")
        if self.init_image is not None and not 0.0 < self.strength <= 1.0:
            raise InvalidInput("Variation strength must be in (0, 1].")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.count)]

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        img2img = self.init_image is not None
        return (self.width, self.height, self.steps, float(self.guidance), img2img,
                float(self.strength) if img2img else None)


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    prompt: str  # the built prompt, with trigger words (never slot tokens)
    png: bytes  # PNG with A1111 parameters and the AI-generated mark
    negative: str = ""
    nsfw: bool = False
    upscaled: bool = False
    parameters: str = ""
    notice: str | None = None  # e.g. what was cut from a too-long prompt


# --- prompts -----------------------------------------------------------------------------------------------------
def _concept_of(req: GenerationRequest, kind: str) -> Any:
    return next((u.artifact for u in req.concepts if getattr(u.artifact, "kind", None) == kind), None)


def _join_words(art: Any, words: str | None, default: str) -> str | None:
    trigger = " ".join(getattr(art, "tokens", []) or []) if art is not None else ""
    if trigger and words:
        return f"{trigger} {words}"
    if trigger:
        return f"{trigger} {default}".strip()
    return words or None


def build_request_prompt(req: GenerationRequest, tokenizer: Any = None) -> BuiltPrompt:
    """The template applied to a request: face trigger, kit (trigger + words), user prompt, style."""
    face = _concept_of(req, "face")
    return build_prompt(
        req.prompt,
        face_trigger=" ".join(face.tokens) if face is not None and face.tokens else None,
        kit_words=_join_words(_concept_of(req, "kit"), req.kit_words, "football kit"),
        style_words=_join_words(_concept_of(req, "style"), req.style_words, "style"),
        negative=req.negative_prompt,
        tokenizer=tokenizer,
    )


def plain_text(text: str) -> str:
    """Text without ``<...>`` placeholder tokens (for models that do not know them, e.g. the upscaler)."""
    return " ".join(re.sub(r"<[^<>\s]+>", " ", text).split())


# --- pipeline helpers --------------------------------------------------------------------------------------------
def use_dpm_solver(pipe: Any) -> None:
    """Install DPM-Solver++ 2M Karras from the pipeline's own scheduler config (once; idempotent)."""
    from diffusers import DPMSolverMultistepScheduler

    if isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
        return
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )


_IMG2IMG: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _img2img(pipe: Any) -> Any:
    p = _IMG2IMG.get(pipe)
    if p is None:
        from diffusers import StableDiffusionImg2ImgPipeline

        # Built from the same modules, not with ``from_pipe``: that casts every shared module to its ``dtype``
        # argument (default float32), which silently turned a resident fp16/bf16 pipeline into fp32.
        p = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        _IMG2IMG[pipe] = p
    p.scheduler = pipe.scheduler
    return p


def encode_text(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """CLIP hidden states for ``texts`` (as the SD pipeline computes them, without clip-skip)."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    enc = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")
    mask = enc.attention_mask.to(te.device) if getattr(te.config, "use_attention_mask", False) else None
    with torch.no_grad():
        out = te(enc.input_ids.to(te.device), attention_mask=mask)[0]
    return out.to(dtype=te.dtype)


def _noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    # CPU generators: the same seed gives the same image on any device.
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def model_name(pipe: Any) -> str:
    ref = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "") or "unknown"
    return Path(str(ref)).name if Path(str(ref)).exists() else str(ref)  # never leak local paths


# --- safety and metadata ---------------------------------------------------------------------------------------
def check_safety(pipe: Any, images: list[Image.Image], checker: Any = None) -> tuple[list[Image.Image], list[bool]]:
    """Run the safety checker: ``checker`` False = off; a callable(images) -> flags; else the pipeline's own."""
    flags = [False] * len(images)
    if checker is False:
        return images, flags
    if callable(checker) and not isinstance(checker, torch.nn.Module):
        flags = [bool(f) for f in checker(images)]
    else:
        model = checker if isinstance(checker, torch.nn.Module) else getattr(pipe, "safety_checker", None)
        fe = getattr(pipe, "feature_extractor", None)
        if model is None or fe is None:
            return images, flags
        p = next(model.parameters())
        inp = fe(images, return_tensors="pt").pixel_values.to(p.device, p.dtype)
        arr = np.stack([np.asarray(im, np.float32) / 255.0 for im in images])
        with torch.no_grad():
            _, found = model(images=arr, clip_input=inp)
        flags = [bool(f) for f in found]
    return [Image.new("RGB", im.size) if f else im for im, f in zip(images, flags, strict=True)], flags


def a1111_parameters(prompt: str, negative: str, *, steps: int, cfg: float, seed: int, size: tuple[int, int],
                     model: str, sampler: str = SAMPLER_NAME, extra: dict[str, Any] | None = None) -> str:
    """The ``parameters`` text A1111 writes (and reads back: "PNG Info")."""
    fields = {"Steps": steps, "Sampler": sampler, "CFG scale": cfg, "Seed": seed,
              "Size": f"{size[0]}x{size[1]}", "Model": model, **(extra or {}),
              "Version": f"KitBooth {__version__}"}
    line = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return f"{prompt}\nNegative prompt: {negative}\n{line}"


_XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'xmlns:xmp="http://ns.adobe.com/xap/1.0/" Iptc4xmpExt:DigitalSourceType="{src}" xmp:CreatorTool="KitBooth {v}"/>'
    "</rdf:RDF></x:xmpmeta>"
)


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    """PNG with A1111's ``parameters`` chunk and a machine-readable "AI generated" mark."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("Software", f"KitBooth {__version__}")
    info.add_text("ai_generated", "true")
    info.add_itxt("DigitalSourceType", IPTC_TRAINED_ALGORITHMIC)
    info.add_itxt("XML:com.adobe.xmp", _XMP.replace("{src}", IPTC_TRAINED_ALGORITHMIC).replace("{v}", __version__))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# --- generation ----------------------------------------------------------------------------------------------------
def _groups(requests: list[GenerationRequest], composer: Composer) -> list[list[int]]:
    by_key: dict[tuple, list[list[int]]] = {}
    for i, r in enumerate(requests):
        buckets = by_key.setdefault(r.batch_key(), [[]])
        cur = buckets[-1]
        if cur and not composer.can_batch([requests[j].concepts for j in [*cur, i]]):
            cur = []
            buckets.append(cur)
        cur.append(i)
    return [g for buckets in by_key.values() for g in buckets]


def _steps_run(r: GenerationRequest) -> int:
    return max(1, int(r.steps * r.strength)) if r.init_image is not None else r.steps


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
    total = sum(_steps_run(requests[g[0]]) for g in groups)
    done = 0
    name = model or model_name(pipe)
    results: list[list[GeneratedImage]] = [[] for _ in requests]
    for g in groups:
        if should_stop is not None and should_stop():
            raise JobCancelled("cancelled")
        outs = _run_group(
            pipe, composer, [requests[i] for i in g], g, done=done, total=total, progress=progress,
            request_progress=request_progress, preview_every_s=preview_every_s, should_stop=should_stop,
            safety_checker=safety_checker, upscaler=upscaler, upscale_steps=upscale_steps, model=name,
        )
        for i, out in zip(g, outs, strict=True):
            results[i] = out
        done += _steps_run(requests[g[0]])
    return results


def _run_group(pipe: Any, composer: Composer, reqs: list[GenerationRequest], global_idx: list[int], *, done: int,
               total: int, progress: Progress | None, request_progress: RequestProgress | None,
               preview_every_s: float, should_stop: Callable[[], bool] | None, safety_checker: Any,
               upscaler: Any, upscale_steps: int, model: str) -> list[list[GeneratedImage]]:
    r0 = reqs[0]
    rows = [i for i, r in enumerate(reqs) for _ in range(r.count)]
    seeds = [s for r in reqs for s in r.seeds]
    t0 = time.perf_counter()
    last_preview = [-1e9]
    cols = max(r.count for r in reqs)

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

    with composer.compose([r.concepts for r in reqs]) as comp:
        built = [build_request_prompt(r, pipe.tokenizer) for r in reqs]
        comp.set_rows(text=range(len(reqs)))
        pos = encode_text(pipe, [comp.rewrite(i, b.text) for i, b in enumerate(built)])
        neg = encode_text(pipe, [comp.rewrite(i, b.negative) for i, b in enumerate(built)])
        index = torch.tensor(rows, device=pos.device)
        pos, neg = pos.index_select(0, index), neg.index_select(0, index)
        comp.set_rows(unet=rows)
        common = dict(
            prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=r0.steps,
            guidance_scale=r0.guidance, output_type="latent", callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        with torch.no_grad():
            if r0.init_image is not None:
                gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
                images = [reqs[i].init_image.convert("RGB").resize((r0.width, r0.height)) for i in rows]
                out = _img2img(pipe)(image=images, strength=r0.strength, generator=gens, **common)
            else:
                shape = (1, pipe.unet.config.in_channels, r0.height // pipe.vae_scale_factor,
                         r0.width // pipe.vae_scale_factor)
                latents = torch.cat([_noise(s, shape) for s in seeds]).to(pipe.unet.device, pos.dtype)
                out = pipe(height=r0.height, width=r0.width, latents=latents, **common)
        latents = out.images
    t_denoise = time.perf_counter() - t0
    pil = _decode(pipe, latents)
    upscaled = [False] * len(rows)
    want_up = [j for j, ri in enumerate(rows) if reqs[ri].upscale]
    if want_up and upscaler is None:
        log.info("upscale requested but no upscaler is configured: returning base size")
    elif want_up:
        for j in want_up:
            ri = rows[j]
            pil[j] = _latent_upscale(upscaler, latents[j : j + 1], plain_text(built[ri].text), seeds[j], upscale_steps)
            upscaled[j] = True
    pil, flags = check_safety(pipe, pil, safety_checker)
    results: list[list[GeneratedImage]] = [[] for _ in reqs]
    for j, ri in enumerate(rows):
        r, b = reqs[ri], built[ri]
        extra: dict[str, Any] = {}
        if r.init_image is not None:
            extra["Denoising strength"] = r.strength
        if upscaled[j]:
            extra.update({"Hires upscale": 2, "Hires upscaler": "Latent (sd-x2-latent-upscaler)"})
        params = a1111_parameters(b.text, b.negative, steps=r.steps, cfg=r.guidance, seed=seeds[j],
                                  size=pil[j].size, model=model, extra=extra)
        results[ri].append(GeneratedImage(
            image=pil[j], seed=seeds[j], prompt=b.text, negative=b.negative, png=png_bytes(pil[j], params),
            nsfw=flags[j], upscaled=upscaled[j], parameters=params, notice=b.notice,
        ))
    log.info("generated %d images for %d requests in %.2f s (denoise %.2f s)", len(rows), len(reqs),
             time.perf_counter() - t0, t_denoise)
    return results


def _decode(pipe: Any, latents: torch.Tensor, chunk: int = 4) -> list[Image.Image]:
    out: list[Image.Image] = []
    vae = pipe.vae
    with torch.no_grad():
        for k in range(0, latents.shape[0], chunk):
            lat = latents[k : k + chunk].to(vae.device, vae.dtype) / vae.config.scaling_factor
            img = vae.decode(lat, return_dict=False)[0]
            out.extend(pipe.image_processor.postprocess(img, output_type="pil"))
    return out


def _latent_upscale(upscaler: Any, latents: torch.Tensor, prompt: str, seed: int, steps: int) -> Image.Image:
    upscaler.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return upscaler(prompt=[prompt], image=latents, num_inference_steps=steps, guidance_scale=0.0,
                        generator=torch.Generator("cpu").manual_seed(seed)).images[0]


# --- result buttons -------------------------------------------------------------------------------------------------
def vary(request: GenerationRequest, image: Image.Image, *, strength: float = 0.35, seed: int | None = None,
         count: int | None = None) -> GenerationRequest:
    """A request for variations of ``image``: img2img at ``strength`` with the same prompt and concepts.

    Keeps the composition and identity of the picked image and changes details. The seed defaults to a
    different one derived from the request's (so "vary" twice gives different variations only if the caller
    passes new seeds).
    """
    return dataclasses.replace(
        request, init_image=image, strength=strength,
        seed=seed if seed is not None else (request.seed + 7919) % MAX_SEED,
        count=count or request.count, upscale=False,
    )


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
        out, method = _latent_upscale(upscaler, lat, text, seed, steps), "Latent (sd-x2-latent-upscaler)"
    (out,), (flag,) = check_safety(pipe, [out], safety_checker)
    params = (f"{text}\nUpscale: 2, Upscaler: {method}, Seed: {seed}, Size: {out.width}x{out.height}, "
              f"Model: {model or model_name(pipe)}, Version: KitBooth {__version__}")
    return GeneratedImage(image=out, seed=seed, prompt=text, png=png_bytes(out, params), nsfw=flag,
                          upscaled=True, parameters=params)
