"""``kitbooth compare``: every training method on the same photos, side by side. Torch-free at import time.

    kitbooth compare --photos DIR --held-out DIR --out DIR [--methods ti,lora,...] [--kit WORDS|FILE] [--steps N]

Trains each method with its defaults on ``--photos`` (checked like ``kitbooth train``), generates a fixed prompt
set with fixed seeds without and with the kit, measures identity against ``--held-out`` (photos of the same
person not used for training) and CLIP-T when ``--clip-model`` names a local CLIP model, and writes into
``--out``: report.json, report.md, chart.png, sheet-<method>.png and each method's concept and images under
``<method>/``. Run it again with the same inputs and finished methods are reused. On the tiny test model (use
``--resolution 64``) it runs end to end in seconds and its numbers mean nothing.

``--kit``: a kit concept file (KitBooth, or a community LoRA/embedding), or the kit in words (default
"red and white home football kit").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kitbooth import limits
from training import cli_checks as check
from training.cli_train import class_image_store
from training.config import METHODS
from training.eval import EVAL_PROMPTS

CONCEPT_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt")
DEFAULT_PROMPTS = 4
HELP = "train every method on the same photos; compare size, time, memory, identity with and without a kit, CLIP-T"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=HELP,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.one_line_errors(p, "compare")
    p.add_argument("--photos", required=True, type=Path, help="folder of training selfies")
    p.add_argument("--held-out", required=True, type=Path, help="folder of other photos of the same person")
    p.add_argument("--out", required=True, type=Path, help="folder for the report (reused by a later run)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"methods to compare, comma- or space-separated (default: all of {', '.join(METHODS)})")
    p.add_argument("--kit", default=None, metavar="WORDS|FILE", help="a kit concept file, or the kit in words")
    p.add_argument("--steps", type=int, help="training steps for every method (default: each method's own)")
    p.add_argument("--resolution", type=int, default=512, help="training resolution (64 on the tiny model)")
    p.add_argument("--base-model", help="hub id, local diffusers folder or .safetensors (default: settings)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: settings)")
    p.add_argument("--dtype", default=None, help="auto, float16, bfloat16 or float32 (default: settings)")
    p.add_argument("--sample-steps", type=int, default=25, help="denoising steps per image")
    p.add_argument("--size", type=int, default=None, help="generated side in pixels (default: the resolution)")
    p.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS,
                   help=f"how many of the fixed prompts (1-{len(EVAL_PROMPTS['face'])})")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt (prompt i: seed + 1000 i)")
    p.add_argument("--clip-model", default=None, help="local CLIP model (folder or cached hub id) for CLIP-T; "
                                                      "none: CLIP-T is n/a (nothing is downloaded)")
    p.add_argument("--no-safety-checker", action="store_true", help="do not run the safety checker")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=check.first(check_args, _compare))


def methods(values: list[str] | None) -> tuple[str, ...]:
    """The methods named (``ti,lora`` or ``ti lora``), in order, each once; all of METHODS when none."""
    names = [n.strip() for v in values or () for n in v.split(",") if n.strip()]
    if values is not None and not names:
        raise check.BadArgument(f"--methods names no method — use some of {', '.join(METHODS)}.")
    for n in names:
        if n not in METHODS:
            raise check.BadArgument(f"--methods {n}: unknown method — use {', '.join(METHODS)}.")
    return tuple(dict.fromkeys(names)) or METHODS


def kit(value: str | None) -> tuple[str | None, Path | None]:
    """(words, None) or (None, file): a value that names a file or looks like one must be an existing file."""
    if value is None:
        return None, None
    path = Path(value)
    if path.suffix.lower() in CONCEPT_SUFFIXES or value.startswith((".", "/", "~")) or path.exists():
        return None, check.input_file(path, "--kit")
    words = " ".join(value.split())
    if not words:
        raise check.BadArgument("--kit is empty — give the kit in words or a kit concept file.")
    if len(words) > limits.DESCRIPTION_CHARS:
        raise check.BadArgument(f"--kit is {len(words)} characters — describe the kit in up to "
                                f"{limits.DESCRIPTION_CHARS}.")
    if "<" in words or ">" in words:
        raise check.BadArgument("--kit contains reserved tokens (`<...>`) — remove them.")
    return words, None


def check_args(args: argparse.Namespace) -> None:
    """Every argument, before a photo is read or a model loaded (``BadArgument``: one line, exit 1)."""
    check.input_dir(args.photos, "--photos")
    check.input_dir(args.held_out, "--held-out")
    check.output_dir(args.out, "--out")
    methods(args.methods)
    kit(args.kit)
    check.integer(args.steps, "--steps", 1, limits.TRAIN_STEPS_MAX)
    check.side(args.resolution, "--resolution")
    check.base_model(args.base_model)
    check.denoise_steps(args.sample_steps, "--sample-steps")
    check.side(args.size, "--size")
    check.integer(args.prompts, "--prompts", 1, len(EVAL_PROMPTS["face"]))
    check.seed(args.seed)


def _compare(args: argparse.Namespace, settings) -> int:
    from training.compare import DEFAULT_KIT_WORDS, CompareOptions, Kit, compare

    words, file = kit(args.kit)
    chosen = methods(args.methods)
    safety = False if args.no_safety_checker or not settings.safety_checker else (
        settings.safety_checker_model or True)
    # DreamBooth as the worker trains it: its class images per the settings, cached in the artifact store.
    dreambooth = {"num_class_images": settings.dreambooth_class_images,
                  "class_steps": settings.dreambooth_class_steps}
    compare(CompareOptions(
        photos=args.photos, held_out=args.held_out, out=args.out, methods=chosen,
        base_model=str(args.base_model or settings.base_model),
        kit=Kit(file=file) if file else Kit(words=words or DEFAULT_KIT_WORDS), steps=args.steps,
        resolution=args.resolution, sample_steps=args.sample_steps, size=args.size,
        prompts=tuple(EVAL_PROMPTS["face"][: args.prompts]), seed=args.seed, clip_model=args.clip_model,
        device=args.device or settings.device, dtype=args.dtype or settings.dtype, offline=settings.offline,
        safety_checker=safety, ti_slots=settings.ti_slots, lora_cache=settings.lora_cache,
        progress=not args.no_progress, method_overrides={"dreambooth": dreambooth},
        store=class_image_store(settings) if "dreambooth" in chosen else None,
    ))
    return 0
