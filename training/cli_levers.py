"""The likeness levers on the command line: ``kitbooth generate --best-of N --photos DIR --face-detail`` and
``kitbooth eval --levers`` (identity with and without each lever, :func:`training.eval_levers.evaluate_levers`).
Torch-free at import time, like every CLI module: the heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kitbooth import limits
from training import cli_checks as check

BEST_OF_CLI_MAX = 4 * limits.COUNT_MAX  # a local run may rank more candidates than a member's request


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="generate N candidates (more than --count) and keep the --count closest to --photos")
    p.add_argument("--photos", default=None, metavar="SELFIES_DIR",
                   help="selfies of the person: the reference identity that --best-of ranks by")
    p.add_argument("--face-detail", nargs="?", const="always", default="auto", choices=["auto", "always", "off"],
                   help="re-draw the face with the face concept: auto (default: faces below a quarter of the "
                        "image), always (the bare flag) or off")


def check_generate_args(args: argparse.Namespace) -> None:
    """Before any model load: --best-of needs --photos and more candidates than images."""
    if args.best_of is not None:
        check.integer(args.best_of, "--best-of", args.count + 1, BEST_OF_CLI_MAX)
        if args.photos is None:
            raise check.BadArgument("--best-of ranks by likeness: give --photos DIR with selfies of the person.")
    if args.photos is not None:
        check.input_dir(args.photos, "--photos")


def generate_with_levers(args: argparse.Namespace, pipe: Any, composer: Any, req: Any, uses: list[Any],
                         progress: Any) -> list[Any]:
    """``generate`` for ``req`` plus the levers the options ask for; the images to write, best first."""
    from training.eval import load_photos
    from training.generate import generate
    from training.likeness_levers import apply_levers, candidate_requests
    from training.rerank import reference_descriptor

    safety = False if args.no_safety_checker else None
    reference = None
    if args.photos is not None:
        reference = reference_descriptor(load_photos(args.photos))
        if reference is None:
            raise check.BadArgument(f"--photos {args.photos}: no face found in any photo — give clear selfies.")
    n = args.best_of or req.count
    reqs = candidate_requests(req, n) if reference is not None and n > req.count else [req]
    images = [g for out in generate(pipe, composer, reqs, progress=progress, safety_checker=safety) for g in out]
    face = next((u for u in uses if getattr(u.artifact, "kind", None) == "face"), None)
    if reference is None and (args.face_detail == "off" or face is None):
        return images
    res = apply_levers(pipe, composer, req, images, keep=req.count, reference=reference, face_use=face,
                       detail=args.face_detail, safety_checker=safety)
    for g, like, detailed in zip(res.images, res.likeness, res.detailed, strict=True):
        facts = [f"likeness {like:.2f}" if like is not None else ("no face found" if reference is not None else ""),
                 "face detailed" if detailed else ""]
        print(f"seed {g.seed}: " + (", ".join(f for f in facts if f) or "as generated"), file=sys.stderr)
    return res.images


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levers", action="store_true",
                   help="also report identity with and without best-of-N and the face-detail pass (same seeds)")
    p.add_argument("--best-of", type=int, default=2, metavar="N",
                   help="with --levers: candidates per image for the best-of-N arms (1: no best-of arms)")
    p.add_argument("--no-face-detail", action="store_true", help="with --levers: leave out the face-detail arms")


def check_eval_args(args: argparse.Namespace) -> None:
    check.integer(args.best_of, "--best-of", 1, limits.BEST_OF_MAX)


def lever_report(args: argparse.Namespace, pipe: Any, composer: Any, art: Any, photos: list[Any],
                 prompts: list[str]) -> Any:
    """``evaluate_levers`` with the eval's own seeds, steps and size."""
    from training.eval_levers import evaluate_levers
    from training.face_detail import FaceDetailSettings

    detail = FaceDetailSettings(resolution=max(64, min(512, args.size) // 8 * 8), steps=args.steps)
    return evaluate_levers(pipe, composer, art, photos=photos, prompts=prompts, k=args.k, best_of=args.best_of,
                           detail=None if args.no_face_detail else detail, seed=args.seed,
                           steps=args.steps, size=args.size, key=str(Path(args.concept).resolve()))
