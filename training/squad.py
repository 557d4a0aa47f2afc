"""Squad photos: several members, each with their own face, in one picture in the kit.

1. **Scene**: one picture of N people in the kit (and style), generated with the kit and style concepts only —
   no face concept touches the whole picture. The prompt and layout are chosen by the count
   (:data:`SCENES`: "a photo of three football players wearing <kit>, standing side by side in a row, ...").
2. **Faces, in reading order**: the faces detected in the scene (``find_faces``, default dlib's
   :func:`training.face_detection.detect_faces`); when at least N are found, the N largest, sorted left to right
   (then top to bottom). When fewer are found — always on the tiny test model, often on a crowded scene — the
   **layout fallback** is deterministic: the picture is split into N equal columns and each column gets one face
   box (a square half the column wide, centred in it, its top at :data:`HEAD_TOP` of the height: where the
   "standing side by side" prompt puts the heads). Face ``k`` belongs to member ``k`` (the requester first,
   then the members in the order they were named).
3. **Each face redone with its owner's concept only** (:func:`training.face_detail.detail_faces`): one img2img
   call, face ``k``'s crop composed with member ``k``'s concept alone, blended back with a mask that is zero
   inside every other face's box.
4. **Best-of-N** (several scenes): the picture whose faces have the highest **sum** of identity likeness
   (:mod:`training.rerank`) against each member's own reference, when references are given; else the first.

Torch is used only through the functions it calls (the pipeline, the composer, the face-detail pass).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from training.compose import ConceptUse
from training.face_detail import FaceJob, detail_faces, detail_prompt
from training.face_detection import FaceBox, detect_faces
from training.faces import descriptor_distance, face_descriptor
from training.generation_request import GeneratedImage, GenerationRequest
from training.likeness_levers import detail_settings
from training.pipeline_calls import check_safety
from training.png_metadata import png_bytes, with_extra
from training.rerank import Describe, likeness

__all__ = ["HEAD_TOP", "SCENES", "SquadMember", "SquadPicture", "column_boxes", "compose_squad", "scene_request",
           "squad_faces"]

log = logging.getLogger(__name__)

# The scene's subject by number of people ({kit}: the kit's trigger and words).
SCENES: dict[int, str] = {
    2: "a photo of two football players wearing {kit}, standing side by side, waist up",
    3: "a photo of three football players wearing {kit}, standing side by side in a row",
    4: "a photo of four football players wearing {kit}, standing side by side in a row",
    5: "a team photo of five football players wearing {kit}, standing side by side in a row",
}
HEAD_TOP = 0.12  # fallback layout: the top of each face box, as a fraction of the picture's height

FindFaces = Callable[[Image.Image], list[FaceBox]]


@dataclass(frozen=True)
class SquadMember:
    """One person of the squad: their face concept and (optionally) their reference identity (128-d)."""

    user_id: int
    face: ConceptUse
    reference: np.ndarray | None = None


@dataclass
class SquadPicture:
    image: GeneratedImage  # the finished picture (PNG with parameters, "AI generated" mark)
    layout: str  # "detected" or "columns"
    likeness: list[float | None]  # per member, in order; None without a reference or a face found
    candidates: int


def scene_request(prompt: str, people: int, *, concepts: Sequence[ConceptUse], seed: int, width: int, height: int,
                  steps: int, guidance: float, kit_words: str | None, style_words: str | None,
                  candidates: int = 1) -> GenerationRequest:
    """The scene of ``people`` in the kit: the kit and style concepts only, ``candidates`` seeds."""
    if people not in SCENES:
        raise ValueError(f"a squad photo has 2 to 5 people, not {people}")
    return GenerationRequest(prompt=prompt, concepts=list(concepts), seed=seed, count=candidates, width=width,
                             height=height, steps=steps, guidance=guidance, kit_words=kit_words,
                             style_words=style_words, scene=SCENES[people])


def column_boxes(size: tuple[int, int], n: int) -> list[FaceBox]:
    """The deterministic layout: N equal columns, one face box each (see the module docstring), left to right."""
    width, height = size
    col = width / n
    side = col / 2
    top = HEAD_TOP * height
    return [FaceBox(i * col + (col - side) / 2, top, i * col + (col + side) / 2, top + side, 0.0) for i in range(n)]


def squad_faces(image: Image.Image, n: int, find_faces: FindFaces = detect_faces) -> tuple[list[FaceBox], str]:
    """N face boxes in reading order and how they were found ("detected" or the "columns" fallback)."""
    found = find_faces(image)
    if len(found) < n:
        return column_boxes(image.size, n), "columns"
    biggest = sorted(found, key=lambda b: -b.area)[:n]
    return sorted(biggest, key=lambda b: (b.center[0], b.center[1])), "detected"


def _trigger(use: ConceptUse) -> str | None:
    return " ".join(getattr(use.artifact, "tokens", []) or []) or None


def _scores(image: Image.Image, regions: Sequence[tuple[int, int, int, int]], members: Sequence[SquadMember],
            describe: Describe) -> list[float | None]:
    out: list[float | None] = []
    for region, m in zip(regions, members, strict=True):
        d = describe(image.crop(region)) if m.reference is not None else None
        out.append(None if d is None else likeness(descriptor_distance(np.asarray(d, np.float64), m.reference)))
    return out


def compose_squad(pipe: Any, composer: Any, request: GenerationRequest, scenes: Sequence[GeneratedImage],
                  members: Sequence[SquadMember], *, find_faces: FindFaces = detect_faces,
                  describe: Describe = face_descriptor, safety_checker: Any = None,
                  should_stop: Callable[[], bool] | None = None) -> SquadPicture:
    """Steps 2-4 of the module docstring on the generated ``scenes`` (one per candidate seed)."""
    settings = detail_settings(request, "always")
    done: list[tuple[Image.Image, GeneratedImage, str, list[float | None], list[FaceBox]]] = []
    for g in scenes:
        boxes, layout = squad_faces(g.image, len(members), find_faces)
        faces = [FaceJob(box, detail_prompt(_trigger(m.face)), [m.face]) for box, m in zip(boxes, members, strict=True)]
        results = detail_faces(pipe, g.image, faces, seed=g.seed, settings=settings, composer=composer,
                               should_stop=should_stop)
        final = results[-1].image
        scores = _scores(final, [r.region for r in results if r.region], members, describe)
        done.append((final, g, layout, scores, boxes))
    best = max(range(len(done)), key=lambda i: (sum(x for x in done[i][3] if x is not None), -i))
    final, g, layout, scores, boxes = done[best]
    (final,), (flag,) = check_safety(pipe, [final], safety_checker)
    extra: dict[str, Any] = {"Squad": len(members), "Squad faces": layout,
                             "Face detail": "img2img, one concept per face", "Face detail strength": settings.strength}
    if len(done) > 1:
        extra["Best of"] = len(done)
    params = with_extra(g.parameters, extra)
    image = dataclasses.replace(g, image=final, nsfw=g.nsfw or flag, parameters=params, png=png_bytes(final, params))
    log.info("squad of %d: %d scene(s), faces %s, picked %d", len(members), len(done), layout, best)
    return SquadPicture(image=image, layout=layout, likeness=scores, candidates=len(done))
