"""The face-detail pass (what ADetailer does by hand), with the member's own face concept.

SD 1.5 loses identity when the face is small (a full-body kit shot: the face is a dozen latent pixels across).
For each image whose face is smaller than ``threshold`` of the image's shorter side (or always, by setting):

1. find the face (``find_face``, default :func:`main_face`: dlib's best-scoring detection);
2. crop a square ``margin`` × the face around it (centred a little above the face, like the training crops, so
   the concept sees the framing it was trained on), upscale it to the working ``resolution``;
3. re-denoise the crop with img2img at moderate ``strength``, the concepts composed on the resident pipeline
   (``composer`` + ``concepts``, restored afterwards) and the crop's own prompt (:func:`detail_prompt`);
4. downscale it back and blend it in with a feathered ellipse over the face (:func:`training.faces.face_mask`),
   tapered to 0 at any crop edge inside the image. Pixels where the mask is 0 (everything outside the ellipse's
   feather, and everything outside the crop) are bit-identical to the input.

All crops of a call share one img2img call (each with its own CPU generator). The img2img pipeline shares the
resident pipeline's modules (``training.pipeline_calls.img2img``; not ``from_pipe``, which casts to fp32) and is
run to latents, decoded here: its own safety checker never blacks out a crop. The caller safety-checks the
finished image and writes the PNG, adding :meth:`FaceDetail.parameters` to its A1111 ``parameters``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from kitbooth.errors import InvalidInput, JobCancelled
from training.faces import FaceBox, detect_faces, face_mask
from training.pipeline_calls import decode, encode_text, img2img, use_dpm_solver
from training.prompts import DEFAULT_NEGATIVE

__all__ = [
    "FaceDetail", "FaceDetailSettings", "FaceFinder", "FaceJob", "detail_faces", "detail_prompt", "face_detail",
    "main_face",
]

log = logging.getLogger(__name__)

FaceFinder = Callable[[Image.Image], "FaceBox | None"]

# The crop is centred this fraction of the face side above the face centre (hair in, as in the training crops).
_SHIFT_UP = 0.12


@dataclass(frozen=True)
class FaceDetailSettings:
    """How the pass runs. Defaults: SD 1.5's native 512 px working size; below a quarter of the shorter side
    (128 px in a 512 image, 16 latent pixels) SD 1.5 visibly loses the face; strength 0.4 redraws detail and
    keeps the pose, the expression and the lighting."""

    threshold: float = 0.25  # face side / image shorter side below which the pass runs
    always: bool = False  # run whatever the face size
    strength: float = 0.4
    steps: int = 20  # scheduled img2img steps; int(steps × strength) of them run
    guidance: float = 7.0
    resolution: int = 512  # working size of the crop (a multiple of 8)
    margin: float = 2.3  # crop side = margin × face side (training.faces.CROP_SCALE)
    negative: str = DEFAULT_NEGATIVE

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise InvalidInput("Face-detail strength must be in (0, 1].")
        if self.steps < 1:
            raise InvalidInput("Face-detail steps must be at least 1.")
        if self.resolution < 64 or self.resolution % 8:
            raise InvalidInput("The face-detail resolution must be a multiple of 8, at least 64.")
        if self.margin < 1.0:
            raise InvalidInput("The face-detail margin must be at least 1 (the crop holds the whole face).")
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput("The face-detail threshold is a fraction of the image: use 0 to 1.")

    @property
    def schedule_steps(self) -> int:
        """``num_inference_steps``, lengthened until at least one step runs (diffusers runs int(n × strength))."""
        n = self.steps
        while int(n * self.strength) < 1:
            n += 1
        return n


@dataclass
class FaceDetail:
    """What the pass did to one image; when it did not run ``image`` holds the input's pixels unchanged."""

    image: Image.Image
    ran: bool
    reason: str  # "detailed", "no face found", "face large enough (0.31 ≥ 0.25)"
    box: FaceBox | None = None  # the face, in image pixels
    region: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) of the re-denoised crop
    mask: Image.Image | None = None  # "L", the region's size: blend weight of the new pixels (0 = untouched)
    strength: float | None = None
    steps: int | None = None  # scheduled steps
    denoising_steps: int | None = None  # steps that ran
    seed: int | None = None

    def parameters(self) -> dict[str, Any]:
        """Fields for the PNG's A1111 ``parameters`` (``a1111_parameters(extra=...)``); empty when it did not run."""
        if not self.ran or self.box is None:
            return {}
        b = self.box
        return {
            "Face detail": "img2img",
            "Face detail box": f"{round(b.left)} {round(b.top)} {round(b.right)} {round(b.bottom)}",
            "Face detail strength": self.strength,
            "Face detail steps": self.steps,
        }


def main_face(image: Image.Image) -> FaceBox | None:
    """The default finder: dlib's best-scoring face, or None."""
    boxes = detect_faces(image)
    return boxes[0] if boxes else None


def detail_prompt(trigger: str | None, words: str = "face, detailed") -> str:
    """The crop's prompt: the face concept's trigger and ``words`` ("<kb-face-0> <kb-face-1> person, face,
    detailed"), the way the main template names the person."""
    return f"a close-up photo of {trigger} person, {words}" if trigger else f"a close-up photo, {words}"


def _region(box: FaceBox, size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """The square crop around the face, inside the image (shrunk to the shorter side when it does not fit)."""
    width, height = size
    face = max(box.width, box.height)
    side = max(8, min(round(margin * face), width, height))
    cx, cy = box.center
    cy -= _SHIFT_UP * face
    left = min(max(round(cx - side / 2), 0), width - side)
    top = min(max(round(cy - side / 2), 0), height - side)
    return left, top, left + side, top + side


def _blend_mask(box: FaceBox, region: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Blend weights in [0, 1] over the region: the feathered face ellipse, forced to 0 towards every crop edge
    that lies inside the image (a seam there would show)."""
    left, top, right, bottom = region
    side = right - left
    mask = np.asarray(face_mask(box, left, top, side, side), dtype=np.float64) / 255.0
    ramp = np.clip(np.arange(side) / max(1.0, 0.06 * side), 0.0, 1.0)  # 0 on the edge row itself
    if left > 0:
        mask *= ramp[None, :]
    if right < size[0]:
        mask *= ramp[::-1][None, :]
    if top > 0:
        mask *= ramp[:, None]
    if bottom < size[1]:
        mask *= ramp[::-1][:, None]
    return mask


def _blend(image: Image.Image, new: Image.Image, region: tuple[int, int, int, int], alpha: np.ndarray) -> Image.Image:
    """``image`` with ``new`` blended into ``region`` by ``alpha``; where alpha is 0 the old bytes stay."""
    old = np.asarray(image.crop(region), dtype=np.float64)
    a = alpha[..., None]
    mixed = np.rint(old + (np.asarray(new, dtype=np.float64) - old) * a)
    mixed = np.where(a > 0, mixed, old)  # exact, whatever the float arithmetic did
    out = image.copy()
    out.paste(Image.fromarray(mixed.astype(np.uint8), "RGB"), region[:2])
    return out


def _redenoise(pipe: Any, crops: list[Image.Image], prompts: Sequence[str], rows: Sequence[int], seeds: list[int],
               s: FaceDetailSettings, composer: Any, concepts: Sequence[Sequence[Any]],
               should_stop: Callable[[], bool] | None) -> list[Image.Image]:
    """One img2img call over every crop. Crop ``k`` is redrawn with request ``rows[k]``: its prompt
    (``prompts[i]``) and only its concepts (``concepts[i]``), composed on its own rows of the batch (the
    composer's per-row LoRA hook and per-request TI slots), restored on exit."""
    use_dpm_solver(pipe)
    pipe_i2i = img2img(pipe)

    def on_step(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        if should_stop is not None and should_stop():
            raise JobCancelled("cancelled")
        return kw

    per_request = [list(c) for c in concepts]
    ctx = composer.compose(per_request) if composer is not None and any(per_request) else nullcontext()
    with ctx as comp:
        texts = [comp.rewrite(i, p) if comp else p for i, p in enumerate(prompts)]
        negatives = [comp.rewrite(i, s.negative) if comp else s.negative for i in range(len(prompts))]
        if comp:
            comp.set_rows(text=list(range(len(prompts))))
        pos, neg = encode_text(pipe, texts), encode_text(pipe, negatives)
        index = torch.tensor(list(rows), device=pos.device)
        if comp:
            comp.set_rows(unet=list(rows))
        with torch.no_grad():
            latents = pipe_i2i(
                image=crops, prompt_embeds=pos.index_select(0, index), negative_prompt_embeds=neg.index_select(0, index),
                strength=s.strength, num_inference_steps=s.schedule_steps, guidance_scale=s.guidance,
                generator=[torch.Generator("cpu").manual_seed(x) for x in seeds], output_type="latent",
                callback_on_step_end=on_step,
            ).images
    return decode(pipe, latents)


def face_detail(
    pipe: Any,
    images: Sequence[Image.Image],
    prompt: str,
    *,
    seeds: Sequence[int],
    settings: FaceDetailSettings | None = None,
    find_face: FaceFinder = main_face,
    composer: Any = None,
    concepts: Sequence[Any] = (),
    should_stop: Callable[[], bool] | None = None,
) -> list[FaceDetail]:
    """Run the pass over ``images`` (one seed each, e.g. the seeds they were generated with); one result each,
    in order. ``prompt`` is the crop's prompt with the concepts' trigger words (:func:`detail_prompt`); with a
    ``composer`` the ``concepts`` (``ConceptUse``) are composed for the call, as ``training.generate`` does."""
    s = settings or FaceDetailSettings()
    if len(seeds) != len(images):
        raise ValueError("give one seed per image")
    started = time.perf_counter()
    results: list[FaceDetail] = []
    todo: list[int] = []
    for img, seed in zip(images, seeds, strict=True):
        img = img.convert("RGB")
        box = find_face(img)
        if box is None:
            results.append(FaceDetail(img, False, "no face found"))
            continue
        fraction = max(box.width, box.height) / min(img.size)
        if not s.always and fraction >= s.threshold:
            results.append(FaceDetail(img, False, f"face large enough ({fraction:.2f} ≥ {s.threshold:.2f})", box))
            continue
        results.append(FaceDetail(img, True, "detailed", box, _region(box, img.size, s.margin), seed=seed))
        todo.append(len(results) - 1)
    if not todo:
        return results

    work = (s.resolution, s.resolution)
    crops = [results[i].image.crop(results[i].region).resize(work, Image.Resampling.LANCZOS) for i in todo]
    redrawn = _redenoise(pipe, crops, [prompt], [0] * len(todo), [results[i].seed for i in todo], s, composer,
                         [concepts], should_stop)
    for i, new in zip(todo, redrawn, strict=True):
        r = results[i]
        left, top, right, bottom = r.region
        alpha = _blend_mask(r.box, r.region, r.image.size)
        new = new.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
        r.image = _blend(r.image, new, r.region, alpha)
        r.mask = Image.fromarray(np.ceil(alpha * 255).astype(np.uint8), "L")  # > 0 wherever a pixel may change
        r.strength, r.steps = s.strength, s.schedule_steps
        r.denoising_steps = int(s.schedule_steps * s.strength)
    log.info("face detail on %d of %d images in %.2f s", len(todo), len(images), time.perf_counter() - started)
    return results


@dataclass(frozen=True)
class FaceJob:
    """One face of a picture to redo with its own prompt and concepts (a squad member's own face concept)."""

    box: FaceBox
    prompt: str
    concepts: Sequence[Any] = ()


def _keep_out(alpha: np.ndarray, box: FaceBox, region: tuple[int, int, int, int]) -> None:
    """Zero the blend weights inside ``box`` (another face), in the region's coordinates, in place."""
    left, top, right, bottom = region
    x0, x1 = max(0, int(np.floor(box.left)) - left), min(right - left, int(np.ceil(box.right)) - left)
    y0, y1 = max(0, int(np.floor(box.top)) - top), min(bottom - top, int(np.ceil(box.bottom)) - top)
    if x0 < x1 and y0 < y1:
        alpha[y0:y1, x0:x1] = 0.0


def detail_faces(
    pipe: Any,
    image: Image.Image,
    faces: Sequence[FaceJob],
    *,
    seed: int,
    settings: FaceDetailSettings | None = None,
    composer: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[FaceDetail]:
    """Redo every face of one picture in one img2img call, each with only its own concepts: face ``k``'s crop is
    composed with ``faces[k].concepts`` alone, on its own rows, and its blend mask is zero inside every other
    face's box, so no concept touches a face that is not its own (pixels there stay bit-identical). Crops come
    from the input picture and are blended in order; one result per face (seed ``seed + k``), each ``image`` the
    picture after that face — the last one's is the finished picture. The size threshold does not apply."""
    s = settings or FaceDetailSettings()
    img = image.convert("RGB")
    if not faces:
        return []
    regions = [_region(f.box, img.size, s.margin) for f in faces]
    work = (s.resolution, s.resolution)
    crops = [img.crop(r).resize(work, Image.Resampling.LANCZOS) for r in regions]
    seeds = [seed + k for k in range(len(faces))]
    started = time.perf_counter()
    redrawn = _redenoise(pipe, crops, [f.prompt for f in faces], list(range(len(faces))), seeds, s, composer,
                         [f.concepts for f in faces], should_stop)
    out: list[FaceDetail] = []
    for k, (face, region, new) in enumerate(zip(faces, regions, redrawn, strict=True)):
        left, top, right, bottom = region
        alpha = _blend_mask(face.box, region, img.size)
        for j, other in enumerate(faces):
            if j != k:
                _keep_out(alpha, other.box, region)
        img = _blend(img, new.resize((right - left, bottom - top), Image.Resampling.LANCZOS), region, alpha)
        out.append(FaceDetail(img, True, "detailed", face.box, region,
                              Image.fromarray(np.ceil(alpha * 255).astype(np.uint8), "L"), s.strength,
                              s.schedule_steps, int(s.schedule_steps * s.strength), seeds[k]))
    log.info("face detail on %d faces of one picture in %.2f s", len(faces), time.perf_counter() - started)
    return out
