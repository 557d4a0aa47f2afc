"""``kitbooth generate | inspect | convert | eval``. Torch-free at import time; heavy imports inside each command."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

from kitbooth import limits
from training import cli_checks as check
from training import cli_levers


def register(sub: argparse._SubParsersAction) -> None:
    p = check.one_line_errors(sub.add_parser("generate", help="generate images with one or more concept files"),
                              "generate")
    p.add_argument("--concept", action="append", default=[], metavar="FILE", help="concept file (repeatable)")
    p.add_argument("--weight", action="append", type=float, default=[], help="weight per --concept (default 1)")
    p.add_argument("--prompt", required=True, help="what to draw (the face/kit/style triggers are added)")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    _model_args(p)
    p.add_argument("--seed", type=int, default=None, help="seed of the first image (default: random)")
    p.add_argument("--count", type=int, default=1, choices=range(1, 5), metavar="1-4")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, default=512, help="width and height in pixels (multiple of 8)")
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--negative", default=None, help="negative prompt (default: a sensible one)")
    p.add_argument("--kit-words", default=None, help='e.g. "Arsenal 2024 home kit"')
    p.add_argument("--style-words", default=None)
    cli_levers.add_generate_args(p)
    p.set_defaults(func=check.first(_check_generate, _generate))

    p = check.one_line_errors(sub.add_parser("inspect", help="show a concept file's metadata, size and compatibility"),
                              "inspect")
    p.add_argument("file")
    p.add_argument("--base-model", default=None, help="check compatibility with this base model (ID|DIR|FILE)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=check.first(_check_inspect, _inspect))

    p = check.one_line_errors(sub.add_parser("convert", help="export a concept file as diffusers, A1111 or kohya files"),
                              "convert")
    p.add_argument("file")
    p.add_argument("--to", required=True, choices=["diffusers", "a1111", "kohya"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default=None, help="whose concept: the files are named <name>-kb-<kind> (e.g. alice)")
    p.set_defaults(func=check.first(_check_convert, _convert))

    p = check.one_line_errors(
        sub.add_parser("eval", help="measure a concept: identity vs held-out photos, CLIP-T, size, time"), "eval")
    p.add_argument("--concept", required=True, metavar="FILE")
    p.add_argument("--photos", required=True, metavar="HELD_OUT_DIR", help="photos NOT used for training")
    _model_args(p)
    p.add_argument("--k", type=int, default=4, help="images per prompt")
    p.add_argument("--prompts", type=int, default=None, help="use only the first N prompts of the fixed set")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-model", default=None, help="local CLIP model (default: the hub cache's ViT-L/14)")
    p.add_argument("--out", default=None, help="also write the images here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    cli_levers.add_eval_args(p)
    p.set_defaults(func=check.first(_check_eval, _eval))


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model", default=None, help="hub id, diffusers folder or .safetensors (default: settings)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: settings)")
    p.add_argument("--no-safety-checker", action="store_true", help="do not run the safety checker")


def _load(args: argparse.Namespace, settings: Any) -> tuple[Any, Any]:
    from training.compose import Composer
    from training.models import load_base_pipeline

    print(f"loading {args.base_model or settings.base_model} ...", file=sys.stderr)
    pipe = load_base_pipeline(
        args.base_model or settings.base_model, device=args.device or settings.device, dtype=settings.dtype,
        offline=settings.offline,
        safety_checker=False if args.no_safety_checker or not settings.safety_checker
        else (settings.safety_checker_model or True),
    )
    return pipe, Composer(pipe, slots=settings.ti_slots, lora_cache=settings.lora_cache)


def _bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)


def _generate(args: argparse.Namespace, settings: Any) -> int:
    from kitbooth.errors import UserFacingError
    from training.compose import ConceptUse
    from training.formats import import_file
    from training.generate import GenerationRequest

    try:
        for f in args.concept:  # before the slow model load: each file through the validator (structure)
            community_note(f, import_file(Path(f), kind=None, max_bytes=limits.DELTA_FILE_BYTES))
        pipe, composer = _load(args, settings)
        # ... and against the loaded model's own layer table, as the worker does
        uses = [ConceptUse(str(Path(f).resolve()), import_file(Path(f), kind=None, pipe=pipe, max_bytes=limits.DELTA_FILE_BYTES), w)
                for f, w in zip(args.concept, args.weight or [1.0] * len(args.concept), strict=True)]
        seed = args.seed if args.seed is not None else random.randrange(2**32)
        req = GenerationRequest(args.prompt, uses, seed=seed, count=args.count, width=args.size, height=args.size,
                                steps=args.steps, guidance=args.guidance, negative_prompt=args.negative,
                                kit_words=args.kit_words, style_words=args.style_words)
        bar = _bar(args.steps, "generating")

        def progress(step: int, total: int, _preview: Any) -> None:
            bar.total = total
            bar.n = step
            bar.refresh()

        try:
            images = cli_levers.generate_with_levers(args, pipe, composer, req, uses, progress)
        finally:
            bar.close()
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if images and images[0].notice:
        print(f"note: {images[0].notice}", file=sys.stderr)
    for i, g in enumerate(images):
        path = out / f"{i:02d}-seed{g.seed}.png"
        path.write_bytes(g.png)
        print(f"{path}{'  (blocked by the safety checker)' if g.nsfw else ''}")
    print(f"prompt: {images[0].prompt}", file=sys.stderr)
    return 0


def _check_generate(args: argparse.Namespace) -> None:
    if args.weight and len(args.weight) != len(args.concept):
        raise check.BadArgument("Give one --weight per --concept (or none).")
    for f in args.concept:
        check.input_file(f, "--concept")
    check.output_dir(args.out, "--out")
    check.base_model(args.base_model)
    for w in args.weight:
        check.weight(w)
    check.seed(args.seed)
    check.denoise_steps(args.steps)
    check.side(args.size, "--size")
    check.guidance(args.guidance)
    cli_levers.check_generate_args(args)


def community_note(path: str | Path, art: Any) -> None:
    """A community file is used as a kit; say how to make it a KitBooth concept of its own."""
    source = art.extra.get("source_format") if art.method == "imported" else None
    if source:
        print(f"note: {path} is a {source} file, used here as a kit; `kitbooth import {path} --kind kit|style "
              "--out NAME.safetensors` makes it a KitBooth concept.", file=sys.stderr)


def full_size_parameters(art: Any, hidden_size: int = 768) -> int:
    """Parameters the same concept (method, rank, target layer types) has on full-size SD 1.5.

    Counted on SD 1.5's UNet and text encoder built on the meta device (no memory), by matching the artifact's
    target layer types (``to_q``, ``to_out.0``, ``q_proj`` ...).
    """
    import torch

    from training.models import SD15_TEXT, SD15_UNET

    n = art.embeddings.shape[0] * hidden_size if art.embeddings is not None else 0
    if art.hypernetwork:  # a K/V pair per width, at SD 1.5's cross-attention width
        from training.hypernetwork_layout import module_shapes

        widths = {k.split(".", 1)[0] for k in art.hypernetwork}
        n += len(widths) * 2 * sum(math.prod(s) for s in module_shapes(hidden_size, art.hyper_structure).values())
    for sd, which in ((art.unet_lora, "unet"), (art.text_lora, "text")):
        if not sd:
            continue
        modules = {k.rsplit(".lora_", 1)[0] for k in sd}
        suffixes = {".".join(m.split(".")[-2:]) if m.split(".")[-1].isdigit() else m.split(".")[-1] for m in modules}
        ranks = [t.shape[0] for k, t in sd.items() if ".lora_A." in k]
        rank = art.rank or max(set(ranks), key=ranks.count)
        with torch.device("meta"):
            if which == "unet":
                from diffusers import UNet2DConditionModel

                model = UNet2DConditionModel(**{k: v for k, v in SD15_UNET.items() if not k.startswith("_")})
            else:
                from transformers import CLIPTextConfig, CLIPTextModel

                cfg = {k: v for k, v in SD15_TEXT.items() if k not in ("architectures", "model_type", "torch_dtype")}
                model = CLIPTextModel(CLIPTextConfig(**cfg))
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if w is not None and w.dim() >= 2 and any(name == s or name.endswith("." + s) for s in suffixes):
                n += rank * (w.shape[1] + w.shape[0])
    return n


def _check_inspect(args: argparse.Namespace) -> None:
    check.input_file(args.file, "FILE")
    check.base_model(args.base_model)


def _check_convert(args: argparse.Namespace) -> None:
    check.input_file(args.file, "FILE")
    check.output_dir(args.out, "--out")


def _inspect(args: argparse.Namespace, settings: Any) -> int:
    """Any concept file the worker reads (ours, diffusers, A1111, kohya), through the one validator."""
    from kitbooth.errors import UserFacingError
    from training.formats import import_file

    path = Path(args.file)
    try:
        art = import_file(path, kind=None, max_bytes=limits.DELTA_FILE_BYTES)
        community_note(path, art)
    except (UserFacingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info: dict[str, Any] = {
        "file": str(path), "bytes": path.stat().st_size, "format": art.extra.get("source_format", "kitbooth"),
        "kind": art.kind, "method": art.method,
        "base_model": art.base_model, "hidden_size": art.hidden_size, "tokens": art.tokens,
        "trigger": art.trigger, "vectors": 0 if art.embeddings is None else int(art.embeddings.shape[0]),
        "unet_lora_layers": len({k.rsplit(".lora_", 1)[0] for k in art.unet_lora}),
        "text_lora_layers": len({k.rsplit(".lora_", 1)[0] for k in art.text_lora}),
        "rank": art.rank, "alpha": art.alpha, "steps": art.steps, "created": art.created, "version": art.version,
        "parameters": art.num_parameters, "extra": art.extra,
    }
    if art.method == "dreambooth":
        from training.svd_delta import describe

        info["dreambooth"] = describe(art.extra)
    if art.hypernetwork:
        from training.hypernetwork_layout import describe as describe_hypernetwork

        info["hypernetwork"] = describe_hypernetwork(art.hyper_structure or {}, art.hypernetwork,
                                                     art.extra.get("name", ""))
    full = full_size_parameters(art)
    info["full_size_parameters"] = full
    info["full_size_bytes_fp16"] = full * 2
    if args.base_model:
        try:
            from training.models import load_base_pipeline

            pipe = load_base_pipeline(args.base_model, device=args.device, offline=settings.offline,
                                      safety_checker=False)
            import_file(path, kind=None, pipe=pipe, max_bytes=limits.DELTA_FILE_BYTES)  # the validator against that model's layers, as the worker
            info["compatible"] = {"base_model": args.base_model, "ok": True}
        except UserFacingError as exc:
            info["compatible"] = {"base_model": args.base_model, "ok": False, "reason": str(exc)}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for k, v in info.items():
            if k == "compatible":
                v = "yes" if v["ok"] else f"NO: {v['reason']}"
                k = f"compatible with {args.base_model}"
            print(f"{k:>22}: {v}")
    return 0 if info.get("compatible", {"ok": True})["ok"] else 1


def _convert(args: argparse.Namespace, settings: Any) -> int:
    from kitbooth.errors import UserFacingError
    from training.artifact import load_artifact
    from training.formats import export

    try:
        files = export(load_artifact(Path(args.file)), args.to, Path(args.out), name=args.name)
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in files:
        print(f)
    return 0


def _check_eval(args: argparse.Namespace) -> None:
    check.input_file(args.concept, "--concept")
    check.input_dir(args.photos, "--photos")
    if args.out:
        check.output_dir(args.out, "--out")
    check.base_model(args.base_model)
    check.integer(args.k, "--k", 1, check.EVAL_IMAGES_MAX)
    check.integer(args.prompts, "--prompts", 1, check.EVAL_IMAGES_MAX)
    check.denoise_steps(args.steps)
    check.side(args.size, "--size")
    check.seed(args.seed)


def _eval(args: argparse.Namespace, settings: Any) -> int:
    from kitbooth.errors import UserFacingError
    from training.artifact import load_artifact
    from training.eval import EVAL_PROMPTS, ClipScorer, evaluate, load_photos

    cli_levers.check_eval_args(args)
    try:
        art = load_artifact(Path(args.concept))
        photos = load_photos(args.photos)
        prompts = EVAL_PROMPTS.get(art.kind, EVAL_PROMPTS["face"])[: args.prompts or None]
        pipe, composer = _load(args, settings)
        clip = ClipScorer.load(args.clip_model)
        total = args.k * len(prompts)
        from tqdm.auto import tqdm

        with tqdm(total=total, desc="evaluating", unit="image", file=sys.stderr, leave=False) as bar:
            report = evaluate(
                pipe, composer, art, photos=photos, k=args.k, prompts=prompts, seed=args.seed, steps=args.steps,
                size=args.size, key=str(Path(args.concept).resolve()),
                artifact_bytes=Path(args.concept).stat().st_size, clip=clip if clip is not None else False,
                out_dir=args.out, progress=lambda done, n: bar.update(done - bar.n),
            )
        if clip is None:
            report.notes.append("CLIP-T skipped: no CLIP model available locally")
        levers = cli_levers.lever_report(args, pipe, composer, art, photos, prompts) if args.levers else None
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(report.to_json() if levers is None else
              json.dumps({**json.loads(report.to_json()), "levers": levers.to_dict()}, indent=2))
    else:
        print(report.format() + ("" if levers is None else "\n\n" + levers.format()))
    return 0
