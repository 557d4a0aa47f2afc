"""``kitbooth eval`` for the likeness levers: identity with and without best-of-N and the face-detail pass, on the
same seeds.

Per prompt, ``k × best_of`` images are generated once, with seeds ``seed + 1000·p + j`` (the first ``k`` are the
seeds :func:`training.eval.evaluate` uses). Then four arms of ``k`` images each are scored against the reference
identity (:mod:`training.rerank`: Euclidean distance to the mean selfie descriptor, likeness = 1 - d / 1.2):

* **baseline**: the first ``k`` seeds, as generated;
* **best-of-N**: the ``k`` of all ``N`` closest to the reference;
* **face detail**: the baseline images after the face-detail pass (same seeds, the concept composed);
* **best-of-N + face detail**: the best-of picks after the pass.

An arm is left out when its lever is off (``best_of=1``, ``detail=None``). Each arm's time per shown image is
the generation it needs (``best_of`` images per image shown) plus its scoring and detail time. A candidate with no
face counts as a miss for the match rate and is not in the mean distance. On the tiny model the numbers mean
nothing; the report is the same with real weights.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from kitbooth import limits
from training.compose import ConceptUse
from training.eval import EVAL_PROMPTS
from training.face_detail import (
    FaceDetail,
    FaceDetailSettings,
    FaceFinder,
    detail_prompt,
    face_detail,
    main_face,
)
from training.faces import IDENTITY_THRESHOLD, face_descriptor
from training.generate import GenerationRequest, generate
from training.rerank import Describe, reference_descriptor, rerank, score_candidates

__all__ = ["ARMS", "LeverArm", "LeverImage", "LeverReport", "evaluate_levers"]

log = logging.getLogger(__name__)

ARMS = ("baseline", "best-of-N", "face detail", "best-of-N + face detail")
DEFAULT_DETAIL = FaceDetailSettings()


@dataclass
class LeverImage:
    prompt: str
    seed: int
    distance: float | None  # to the reference; None when no face was found
    likeness: float | None
    detailed: bool = False  # the face-detail pass ran on it


@dataclass
class LeverArm:
    name: str
    images: list[LeverImage]
    seconds_per_image: float
    face_rate: float = 0.0
    match_rate: float = 0.0  # share under dlib's same-person threshold (no face = miss)
    distance_mean: float | None = None
    likeness_mean: float | None = None

    def __post_init__(self) -> None:
        n = max(1, len(self.images))
        dists = [i.distance for i in self.images if i.distance is not None]
        self.face_rate = len(dists) / n
        self.match_rate = sum(d < IDENTITY_THRESHOLD for d in dists) / n
        if dists:
            self.distance_mean = statistics.fmean(dists)
            self.likeness_mean = statistics.fmean(i.likeness for i in self.images if i.likeness is not None)


@dataclass
class LeverReport:
    k: int
    best_of: int
    prompts: list[str]
    seeds: list[int]  # the baseline seeds, every arm's starting point
    arms: list[LeverArm] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def arm(self, name: str) -> LeverArm:
        return next(a for a in self.arms if a.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        def f(x: float | None, spec: str = ".3f") -> str:
            return "n/a" if x is None else format(x, spec)

        lines = [f"likeness levers: {len(self.prompts)} prompts × {self.k} images, best of {self.best_of}",
                 f"{'arm':<26}{'faces':>7}{'same':>7}{'likeness':>10}{'distance':>10}{'s/image':>9}"]
        for a in self.arms:
            lines.append(f"{a.name:<26}{f(a.face_rate, '.0%'):>7}{f(a.match_rate, '.0%'):>7}"
                         f"{f(a.likeness_mean):>10}{f(a.distance_mean):>10}{a.seconds_per_image:>9.2f}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _generate(pipe: Any, composer: Any, use: ConceptUse, prompt: str, seed: int, n: int, steps: int,
              size: int) -> list[Image.Image]:
    """``n`` images of ``prompt`` with seeds ``seed..seed+n-1`` (requests of at most COUNT_MAX images)."""
    requests = [GenerationRequest(prompt, [use], seed=seed + j, count=min(limits.COUNT_MAX, n - j), width=size,
                                  height=size, steps=steps) for j in range(0, n, limits.COUNT_MAX)]
    return [g.image for out in generate(pipe, composer, requests) for g in out]


def evaluate_levers(
    pipe: Any,
    composer: Any,
    artifact: Any,
    *,
    photos: Sequence[Image.Image] = (),
    reference: np.ndarray | None = None,
    prompts: Sequence[str] | None = None,
    k: int = 2,
    best_of: int = 2,
    detail: FaceDetailSettings | None = DEFAULT_DETAIL,
    seed: int = 0,
    steps: int = 25,
    size: int = 512,
    key: str = "eval",
    describe: Describe = face_descriptor,
    find_face: FaceFinder = main_face,
) -> LeverReport:
    """Score each arm (see the module docstring). The reference is ``reference`` (the stored mean descriptor) or
    the mean descriptor of ``photos``; ``describe`` and ``find_face`` are the seams of :mod:`training.rerank`
    and :mod:`training.face_detail`."""
    if k < 1 or best_of < 1:
        raise ValueError("k and best_of must be at least 1")
    prompts = list(prompts or EVAL_PROMPTS["face"])
    report = LeverReport(k=k, best_of=best_of, prompts=prompts, seeds=[])
    ref = reference if reference is not None else reference_descriptor(photos, describe=describe)
    if ref is None:
        report.notes.append("no reference identity (no face in the photos): every distance is n/a")
    use = ConceptUse(key, artifact)
    trigger = " ".join(getattr(artifact, "tokens", []) or []) or None
    arms: dict[str, list[LeverImage]] = {name: [] for name in ARMS}
    gen_s = score_s = detail_s = 0.0
    detailed_n = 0
    n = k * best_of

    def scored(imgs: list[Image.Image]) -> list[tuple[float | None, float | None]]:
        if ref is None:
            return [(None, None)] * len(imgs)
        return [(r.distance, r.likeness) for r in score_candidates(imgs, ref, describe=describe)]

    for pi, prompt in enumerate(prompts):
        seeds = [seed + 1000 * pi + j for j in range(n)]
        report.seeds += seeds[:k]
        t = time.perf_counter()
        images = _generate(pipe, composer, use, prompt, seeds[0], n, steps, size)
        gen_s += time.perf_counter() - t
        t = time.perf_counter()  # every candidate is described once; the undetailed arms reuse the scores
        ranked = {r.index: (r.distance, r.likeness) for r in rerank(images, ref, describe=describe)} \
            if ref is not None else {j: (None, None) for j in range(n)}
        picks = list(ranked)[:k] if best_of > 1 else list(range(k))
        score_s += time.perf_counter() - t
        arm_picks = [("baseline", list(range(k)), False)]
        if best_of > 1:
            arm_picks.append(("best-of-N", picks, False))
        if detail is not None:
            arm_picks.append(("face detail", list(range(k)), True))
            if best_of > 1:
                arm_picks.append(("best-of-N + face detail", picks, True))
        detailed: dict[int, FaceDetail] = {}
        if detail is not None:  # each image once, whichever arms show it
            todo = sorted({j for _, idx, on in arm_picks if on for j in idx})
            t = time.perf_counter()
            results = face_detail(pipe, [images[j] for j in todo], detail_prompt(trigger),
                                  seeds=[seeds[j] for j in todo], settings=detail, find_face=find_face,
                                  composer=composer, concepts=[use])
            detail_s += time.perf_counter() - t
            detailed_n += len(todo)
            detailed = dict(zip(todo, results, strict=True))
        for name, idx, on in arm_picks:
            scores = scored([detailed[j].image for j in idx]) if on else [ranked[j] for j in idx]
            for j, (d, like) in zip(idx, scores, strict=True):
                arms[name].append(LeverImage(prompt, seeds[j], d, like, on and detailed[j].ran))

    shown = max(1, k * len(prompts))
    per_gen = gen_s / max(1, n * len(prompts))
    per_detail = detail_s / max(1, detailed_n)
    cost = {"baseline": per_gen, "best-of-N": per_gen * best_of + score_s / shown}
    cost["face detail"] = cost["baseline"] + per_detail
    cost["best-of-N + face detail"] = cost["best-of-N"] + per_detail
    report.arms = [LeverArm(name, arms[name], cost[name]) for name in ARMS if arms[name]]
    log.info("lever eval: %d prompts, k=%d, best of %d in %.1f s", len(prompts), k, best_of,
             gen_s + score_s + detail_s)
    return report
