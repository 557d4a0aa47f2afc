"""The likeness levers applied to one request's images after ``training.generate.generate`` returns: best-of-N by
identity (:mod:`training.rerank`) and the face-detail pass with the member's own face concept
(:mod:`training.face_detail`). Used by the worker's engine and by ``kitbooth generate``.

* :func:`candidate_requests` turns a request for ``k`` images into requests for ``n`` candidates (at most
  ``COUNT_MAX`` each, seeds ``seed + j``), which ``generate`` runs in one pipeline call (same batch key).
* :func:`apply_levers` keeps the ``k`` closest to the reference (face-less last), runs the detail pass on those
  whose face is small (or always), safety-checks every image the pass changed, and rewrites each PNG's
  ``parameters`` with what ran: ``Best of: 8``, ``Likeness: 0.83`` (of the image as shown) and the pass's fields.

The descriptor (``describe``) and the face finder (``find_face``) are the seams of those two modules.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kitbooth import limits
from training.face_detail import FaceDetailSettings, FaceFinder, detail_prompt, face_detail, main_face
from training.faces import face_descriptor
from training.generation_request import GeneratedImage, GenerationRequest
from training.pipeline_calls import check_safety
from training.png_metadata import png_bytes, with_extra
from training.rerank import Describe, likeness, rerank, score_candidates

__all__ = ["DetailMode", "LeverResult", "apply_levers", "candidate_requests", "detail_settings"]

log = logging.getLogger(__name__)

DetailMode = Literal["auto", "always", "off"]


@dataclass
class LeverResult:
    images: list[GeneratedImage]
    likeness: list[float | None]  # per image shown; None when no face was found or there is no reference
    detailed: list[bool]


def candidate_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` candidates of ``request`` as requests of at most ``COUNT_MAX`` images, seeds ``seed .. seed+n-1``."""
    n = max(n, request.count)
    return [dataclasses.replace(request, seed=request.seed + j, count=min(limits.COUNT_MAX, n - j))
            for j in range(0, n, limits.COUNT_MAX)]


def detail_settings(request: GenerationRequest, mode: DetailMode) -> FaceDetailSettings:
    """The pass at the request's own working size (512 on SD 1.5) and steps; ``always`` whatever the face."""
    side = max(64, min(512, min(request.width, request.height)) // 8 * 8)
    return FaceDetailSettings(always=mode == "always", resolution=side, steps=request.steps,
                              guidance=request.guidance)


def _trigger(use: Any) -> str | None:
    return " ".join(getattr(use.artifact, "tokens", []) or []) or None


def apply_levers(
    pipe: Any,
    composer: Any,
    request: GenerationRequest,
    candidates: Sequence[GeneratedImage],
    *,
    keep: int,
    reference: np.ndarray | None = None,
    face_use: Any = None,
    detail: DetailMode = "auto",
    safety_checker: Any = None,
    describe: Describe = face_descriptor,
    find_face: FaceFinder = main_face,
    should_stop: Callable[[], bool] | None = None,
) -> LeverResult:
    """The ``keep`` images to show, best first when re-ranked (see the module docstring). ``face_use`` is the
    member's face ``ConceptUse`` (the only concept the detail pass composes); without it the pass does not run.
    Run after ``generate`` has returned: the pass composes on the resident pipeline itself."""
    cands = list(candidates)
    n = len(cands)
    if reference is not None and n > keep:
        ranked = rerank([g.image for g in cands], reference, keep, describe=describe)
        picked = [cands[r.index] for r in ranked]
        scores = [r.likeness for r in ranked]
    else:
        picked = cands[:keep]
        scores = ([r.likeness for r in score_candidates([g.image for g in picked], reference, describe=describe)]
                  if reference is not None else [None] * len(picked))
    detailed = [False] * len(picked)
    extras: list[dict[str, Any]] = [{"Best of": n} if n > keep else {} for _ in picked]
    if detail != "off" and face_use is not None and picked:
        results = face_detail(pipe, [g.image for g in picked], detail_prompt(_trigger(face_use)),
                              seeds=[g.seed for g in picked], settings=detail_settings(request, detail),
                              find_face=find_face, composer=composer, concepts=[face_use], should_stop=should_stop)
        ran = [i for i, r in enumerate(results) if r.ran]
        if ran:
            safe, flags = check_safety(pipe, [results[i].image for i in ran], safety_checker)
            for i, img, flag in zip(ran, safe, flags, strict=True):
                picked[i] = dataclasses.replace(picked[i], image=img, nsfw=picked[i].nsfw or flag)
                detailed[i] = True
                extras[i].update(results[i].parameters())
                if reference is not None:  # the figure shown is the likeness of the picture shown
                    d = describe(img)
                    scores[i] = None if d is None else likeness(float(np.linalg.norm(
                        np.asarray(d, np.float64) - np.asarray(reference, np.float64))))
    out = []
    for g, like, extra in zip(picked, scores, extras, strict=True):
        if like is not None:
            extra["Likeness"] = f"{like:.2f}"
        if extra:
            params = with_extra(g.parameters, extra)
            g = dataclasses.replace(g, parameters=params, png=png_bytes(g.image, params))
        out.append(g)
    log.info("levers: %d candidates, kept %d, detailed %d", n, len(out), sum(detailed))
    return LeverResult(out, scores, detailed)
