"""Evaluate a concept: generate K images per prompt over a fixed prompt set and measure them.

* **Identity** (face concepts): dlib's 128-d descriptor (``training.faces.face_descriptor``) of each generated
  image against the held-out photos; the mean distance to them per image, the share of images under dlib's usual
  same-person threshold (0.6) and the share in which a face was found at all.
* **CLIP-T**: CLIP score (100 x cosine of image and prompt embeddings, floored at 0) when a CLIP model is
  available locally (``clip_model`` or the hub cache of ``openai/clip-vit-large-patch14``); skipped otherwise.
* **Cost**: artifact bytes, parameters, and the generation time per image.

Runs end to end on the tiny model (its numbers mean nothing there) and on real SD 1.5.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

SAME_PERSON = 0.6  # dlib's usual threshold
DEFAULT_CLIP = "openai/clip-vit-large-patch14"

#: Fixed prompt set: close-up, mid shot, wide shot, a non-photo style, a hard lighting case.
EVAL_PROMPTS: dict[str, list[str]] = {
    "face": [
        "a close-up portrait photo, looking at the camera",
        "celebrating a goal in a packed stadium",
        "standing on the pitch in the rain, full body",
        "an oil painting portrait",
        "at night under floodlights, dramatic lighting",
    ],
    "kit": [
        "a person wearing it, standing on the pitch",
        "a player wearing it, celebrating a goal",
        "a fan wearing it in the stands",
    ],
    "style": [
        "a football stadium",
        "a portrait of a football fan",
        "a goalkeeper diving",
    ],
}


@dataclass
class ImageScore:
    prompt: str
    seed: int
    face_found: bool | None = None
    identity_distance: float | None = None  # mean distance to the held-out photos
    clip_t: float | None = None
    file: str | None = None


@dataclass
class EvalReport:
    kind: str
    method: str
    tokens: list[str]
    artifact_bytes: int | None
    parameters: int
    images: int
    reference_faces: int
    seconds: float
    seconds_per_image: float
    face_rate: float | None = None
    identity_distance_mean: float | None = None
    identity_distance_median: float | None = None
    identity_match_rate: float | None = None  # share of images under SAME_PERSON
    clip_t_mean: float | None = None
    notes: list[str] = field(default_factory=list)
    scores: list[ImageScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        def f(x: float | None, spec: str = ".3f") -> str:
            return "n/a" if x is None else format(x, spec)

        lines = [
            f"concept: {self.kind} ({self.method}), trigger {' '.join(self.tokens)}",
            f"artifact: {self.artifact_bytes if self.artifact_bytes is not None else 'n/a'} bytes, "
            f"{self.parameters:,} parameters",
            f"images: {self.images} in {self.seconds:.1f} s ({self.seconds_per_image:.2f} s/image)",
            f"identity: faces found {f(self.face_rate, '.0%')}, distance mean {f(self.identity_distance_mean)} "
            f"median {f(self.identity_distance_median)}, same-person (<{SAME_PERSON}) "
            f"{f(self.identity_match_rate, '.0%')} vs {self.reference_faces} held-out photos",
            f"CLIP-T: {f(self.clip_t_mean, '.2f')}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def reference_descriptors(photos: Sequence[Image.Image]) -> tuple[list[Any], str | None]:
    """dlib descriptors of the held-out photos (those with a face), or a note why identity is skipped."""
    try:
        from training.faces import face_descriptor
    except ImportError as exc:  # dlib not installed
        return [], f"identity skipped: face recognition unavailable ({exc})"
    refs = [d for d in (face_descriptor(p) for p in photos) if d is not None]
    if not refs:
        return [], "identity skipped: no face found in the held-out photos"
    return refs, None


class ClipScorer:
    """CLIP-T with a locally available CLIP model (never downloads)."""

    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model, processor

    @classmethod
    def load(cls, ref: str | Path | None = None) -> ClipScorer | None:
        from transformers import CLIPModel, CLIPProcessor

        try:
            ref = str(ref or DEFAULT_CLIP)
            return cls(CLIPModel.from_pretrained(ref, local_files_only=True).eval(),
                       CLIPProcessor.from_pretrained(ref, local_files_only=True))
        except (OSError, ValueError) as exc:
            log.info("no local CLIP model (%s): CLIP-T skipped", exc)
            return None

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        import torch

        inp = self.processor(text=list(texts), images=list(images), return_tensors="pt", padding=True,
                             truncation=True)
        with torch.no_grad():
            img = self.model.get_image_features(pixel_values=inp["pixel_values"])
            txt = self.model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"])
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return [max(0.0, 100.0 * float(s)) for s in (img * txt).sum(-1)]


def evaluate(
    pipe: Any,
    composer: Any,
    artifact: Any,
    *,
    photos: Sequence[Image.Image] = (),
    k: int = 2,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
    steps: int = 25,
    size: int = 512,
    key: str = "eval",
    artifact_bytes: int | None = None,
    clip: ClipScorer | None | bool = True,
    out_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_images_per_call: int = 8,
) -> EvalReport:
    """Generate ``k`` images per prompt of the fixed set and score them (see the module docstring)."""
    from training.compose import ConceptUse
    from training.generate import GenerationRequest, generate
    from training.generation_request import plain_text

    kind = getattr(artifact, "kind", "face")
    prompts = list(prompts or EVAL_PROMPTS.get(kind, EVAL_PROMPTS["face"]))
    notes: list[str] = []
    refs: list[Any] = []
    if kind == "face":
        refs, note = reference_descriptors(photos)
        if note:
            notes.append(note)
    scorer = ClipScorer.load() if clip is True else (clip or None)
    if scorer is None:
        notes.append("CLIP-T skipped: no CLIP model available locally")

    use = ConceptUse(key, artifact)
    requests = []
    for pi, p in enumerate(prompts):
        left = k
        while left > 0:  # a request holds at most 4 images
            n = min(4, left)
            requests.append(GenerationRequest(p, [use], seed=seed + 1000 * pi + (k - left), count=n, width=size,
                                              height=size, steps=steps))
            left -= n
    total_images = sum(r.count for r in requests)
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    scores: list[ImageScore] = []
    t0 = time.perf_counter()
    gen_seconds = 0.0
    done = 0
    chunk: list[GenerationRequest] = []

    def flush() -> None:
        nonlocal gen_seconds, done
        if not chunk:
            return
        t = time.perf_counter()
        results = generate(pipe, composer, chunk)
        gen_seconds += time.perf_counter() - t
        for r, imgs in zip(chunk, results, strict=True):
            for g in imgs:
                s = ImageScore(prompt=g.prompt, seed=g.seed)
                if out:
                    path = out / f"{len(scores):03d}-seed{g.seed}.png"
                    path.write_bytes(g.png)
                    s.file = str(path)
                if refs:
                    s.identity_distance, s.face_found = _identity(g.image, refs)
                if scorer is not None:
                    s.clip_t = scorer.score([g.image], [plain_text(r.prompt)])[0]
                scores.append(s)
                done += 1
                if progress:
                    progress(done, total_images)
        chunk.clear()

    for r in requests:
        if chunk and sum(c.count for c in chunk) + r.count > max_images_per_call:
            flush()
        chunk.append(r)
    flush()

    dists = [s.identity_distance for s in scores if s.identity_distance is not None]
    report = EvalReport(
        kind=kind, method=getattr(artifact, "method", "?"), tokens=list(getattr(artifact, "tokens", [])),
        artifact_bytes=artifact_bytes, parameters=_num_parameters(artifact), images=len(scores),
        reference_faces=len(refs), seconds=time.perf_counter() - t0,
        seconds_per_image=gen_seconds / max(1, len(scores)), notes=notes, scores=scores,
    )
    if refs:
        report.face_rate = sum(bool(s.face_found) for s in scores) / max(1, len(scores))
        # An image with no detectable face counts as a miss for the match rate.
        report.identity_match_rate = sum(d < SAME_PERSON for d in dists) / max(1, len(scores))
        if dists:
            report.identity_distance_mean = statistics.fmean(dists)
            report.identity_distance_median = statistics.median(dists)
        else:
            notes.append("no face found in any generated image")
    clips = [s.clip_t for s in scores if s.clip_t is not None]
    if clips:
        report.clip_t_mean = statistics.fmean(clips)
    return report


def _identity(image: Image.Image, refs: Sequence[Any]) -> tuple[float | None, bool]:
    from training.faces import descriptor_distance, face_descriptor

    d = face_descriptor(image)
    if d is None:
        return None, False
    return statistics.fmean(descriptor_distance(d, r) for r in refs), True


def _num_parameters(art: Any) -> int:
    n = art.embeddings.numel() if getattr(art, "embeddings", None) is not None else 0
    return n + sum(t.numel() for sd in (art.unet_lora or {}, art.text_lora or {}) for t in sd.values())


def load_photos(folder: str | Path) -> list[Image.Image]:
    """Every image in ``folder`` (sorted), upright RGB."""
    from training.images import load_image

    out = []
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}:
            out.append(load_image(p.read_bytes(), name=p.name, min_side=64))
    return out
