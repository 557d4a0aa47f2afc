"""``best_of_cost_ratio`` and ``face_detail_cost_ratio``: what each likeness lever costs per image shown, as a
ratio to plain generation of the same images, measured in the same process (issue 14.5).

* plain: one request for ``k`` = 2 images (one pipeline call, the member's own face concept composed);
* best-of-N (N = 2k): one call of ``N`` candidates + dlib's descriptor on each + the re-rank, ``k`` shown;
* face detail: plain + the face-detail pass on each image with the face concept (img2img at strength 0.4 on a
  crop at the working size). The finder runs dlib's detector (its real cost) and, as the tiny model draws no
  detectable face, falls back to a fixed central box, so the re-denoise is always paid.

On the tiny model the absolute times mean little; the ratios are the figures that carry over to real weights.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from benchmarks.common import Report, make_concept, median_time

K = 2


def run(report: Report, *, pipe: Any, composer: Any, device: Any, size: int, steps: int, repeats: int) -> None:
    from training.compose import ConceptUse
    from training.face_detail import FaceDetailSettings, detail_prompt, face_detail, main_face
    from training.faces import FaceBox
    from training.generate import GenerationRequest, generate
    from training.likeness_levers import candidate_requests
    from training.rerank import rerank

    face = ConceptUse("bench/face", make_concept(pipe, kind="face", method="ti", seed=21))
    req = GenerationRequest(prompt="celebrating a goal in a packed stadium", concepts=[face], seed=7, count=K,
                            width=size, height=size, steps=steps, guidance=7.0)
    reference = np.zeros(128)
    settings = FaceDetailSettings(always=True, resolution=max(64, min(512, size) // 8 * 8), steps=steps)

    def finder(img: Any) -> Any:
        found = main_face(img)
        s = img.width
        return found or FaceBox(0.4 * s, 0.35 * s, 0.6 * s, 0.55 * s, 1.0)

    def plain() -> list[Any]:
        return generate(pipe, composer, [req], safety_checker=False)[0]

    def best_of() -> None:
        out = generate(pipe, composer, candidate_requests(req, 2 * K), safety_checker=False)
        rerank([g.image for imgs in out for g in imgs], reference, K)

    def detailed() -> None:
        images = plain()
        face_detail(pipe, [g.image for g in images], detail_prompt(face.artifact.trigger),
                    seeds=[g.seed for g in images], settings=settings, find_face=finder, composer=composer,
                    concepts=[face])

    detailed()  # warm-up (plain generation, img2img and the detector); best-of runs the same generate path
    times: dict[str, list[float]] = {"plain": [], "best": [], "detail": []}
    for _ in range(repeats):  # interleaved: every arm sees the same machine load
        times["plain"].append(median_time(plain, repeats=1, warmup=0, device=device))
        times["best"].append(median_time(best_of, repeats=1, warmup=0, device=device))
        times["detail"].append(median_time(detailed, repeats=1, warmup=0, device=device))
    t = {k: statistics.median(v) for k, v in times.items()}
    report.set("best_of_cost_ratio", round(t["best"] / t["plain"], 3))
    report.set("face_detail_cost_ratio", round(t["detail"] / t["plain"], 3))
    report.note(f"levers: {K} images shown, {size}², {steps} steps: plain {t['plain'] / K:.3f} s/image; best-of-{2 * K} "
                f"{t['best'] / K:.3f} s/image (×{t['best'] / t['plain']:.2f}); face detail {t['detail'] / K:.3f} "
                f"s/image (×{t['detail'] / t['plain']:.2f})")
