"""``kitbooth train``: photos in a folder -> one concept file. Torch-free at import time.

    kitbooth train --photos DIR --kind face --out me.safetensors [--base-model ID|DIR] [--steps N] [--resume]

Every argument is checked first (``training.cli_checks``: paths by class, numbers against ``kitbooth.limits``,
a ``--resume`` checkpoint by ``training.cli_resume``): one line, exit 1, nothing written. Then it reads the
photos (naming the files skipped for their type), runs the same photo checks the bot runs (``training.faces``),
prints the report with each photo named by its file and exits 1 without writing ``--out`` when too few pass. Then trains with a progress bar, checkpointing beside the
output (``FILE.ckpt``, every ``--checkpoint-every`` steps and on Ctrl-C), so ``--resume`` continues where it
stopped; ``--slice-steps N`` trains at most N steps in this run, checkpoints and exits with code 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kitbooth import limits
from training import cli_checks as check
from training.cli_checks import IMAGE_SUFFIXES
from training.config import METHODS

__all__ = ["IMAGE_SUFFIXES", "checkpoint_path", "load_pipeline", "read_photo_dir", "register"]

EXIT_TOO_FEW_PHOTOS = 1
EXIT_BAD_INPUT = check.EXIT_BAD_INPUT
EXIT_NOT_FINISHED = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="learn a face, kit or style from a folder of photos into one concept file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.one_line_errors(p, "train")
    p.add_argument("--photos", required=True, type=Path, help="folder of photos (JPEG, PNG, WebP, ...)")
    p.add_argument("--kind", required=True, choices=("face", "kit", "style"))
    p.add_argument("--method", choices=METHODS, help="default: pivotal for faces, lora otherwise")
    p.add_argument("--out", required=True, type=Path, help="concept file to write (.safetensors)")
    p.add_argument("--base-model", help="hub id, local diffusers folder or .safetensors (default: settings)")
    p.add_argument("--steps", type=int, help="training steps (default per kind)")
    p.add_argument("--resolution", type=int, help="training resolution (default 512)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--rank", type=int, help="LoRA rank (default 4)")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 50)")
    p.add_argument("--resume", action="store_true", help="continue from FILE.ckpt when it exists")
    p.add_argument("--slice-steps", type=int, help="train at most N steps now, checkpoint, exit 3")
    db = p.add_argument_group("DreamBooth (--method dreambooth; --rank is the stored delta's SVD rank)")
    db.add_argument("--class-images", type=int, help="prior-preservation class images (default 100; cached)")
    db.add_argument("--prior-loss-weight", type=float, help="weight of the class images' loss (default 1)")
    db.add_argument("--train-text-encoder", action="store_true", help="fine-tune the text encoder too")
    db.add_argument("--full-delta", action="store_true", help="kit/style: keep the whole delta (no truncation)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: settings)")
    p.add_argument("--dtype", default=None, help="auto, float16, bfloat16 or float32 (default: settings)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=check.first(check_args, _train))


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def read_photo_dir(folder: Path) -> list[tuple[str, bytes]]:
    """(filename, bytes) of the image files in ``folder``, sorted by name (not recursive)."""
    return check.photo_files(folder)[0]


def check_args(args: argparse.Namespace) -> None:
    """Every argument, before a photo is read or a model loaded (``BadArgument``: one line, exit 1)."""
    check.input_dir(args.photos, "--photos")
    check.output_file(args.out, "--out")
    check.output_file(checkpoint_path(args.out), "--out's checkpoint")
    check.base_model(args.base_model)
    check.integer(args.steps, "--steps", 1, limits.TRAIN_STEPS_MAX)
    check.side(args.resolution, "--resolution")
    check.integer(args.batch_size, "--batch-size", 1, limits.TRAIN_BATCH_MAX)
    check.integer(args.rank, "--rank", 1, limits.LORA_RANK_MAX)
    check.seed(args.seed)
    check.integer(args.checkpoint_every, "--checkpoint-every", 1, limits.TRAIN_STEPS_MAX)
    check.integer(args.slice_steps, "--slice-steps", 1, limits.TRAIN_STEPS_MAX)
    check.integer(args.class_images, "--class-images", 1, 1000)
    check.real(args.prior_loss_weight, "--prior-loss-weight", 0.0, 100.0)


def _check_photos(kind: str, photos: list[tuple[str, bytes]], resolution: int):
    from training import faces

    if kind == "face":
        return faces.check_selfies(photos, resolution=resolution)
    return faces.prepare_reference_photos(photos, kind=kind, resolution=resolution)


def _train(args: argparse.Namespace, settings) -> int:
    from training.cli_resume import check_checkpoint
    from training.config import default_config

    try:
        config = default_config(args.kind, method=args.method, steps=args.steps, resolution=args.resolution,
                                batch_size=args.batch_size, rank=args.rank, seed=args.seed,
                                checkpoint_every=args.checkpoint_every, num_class_images=args.class_images,
                                prior_loss_weight=args.prior_loss_weight, full_delta=args.full_delta or None,
                                train_text_encoder=args.train_text_encoder or None)
    except ValueError as exc:
        raise check.BadArgument(f"{exc} — check the training options.") from None
    ckpt = checkpoint_path(args.out)
    if args.resume and ckpt.exists():
        check.input_file(ckpt, "--resume checkpoint")
        check_checkpoint(ckpt, config)

    photos, skipped = check.photo_files(args.photos)
    if skipped:
        print(check.skipped_line(skipped))
    report = _check_photos(args.kind, photos, config.resolution)
    print(f"Photos in {args.photos} ({len(photos)} files):")
    print(check.file_report(report))
    if not report.ok():
        print(f"Not enough usable photos: {args.out} was not written.", file=sys.stderr)
        return EXIT_TOO_FEW_PHOTOS
    return _run_training(args, settings, config, report.photos)


def _run_training(args: argparse.Namespace, settings, config, photos) -> int:
    import signal
    import threading
    import time

    from tqdm.auto import tqdm

    from kitbooth.errors import UserFacingError
    from training.artifact import save_artifact, write_atomic
    from training.cli_resume import unusable
    from training.trainers import trainer_from_photos

    ref = args.base_model or settings.base_model
    try:
        pipe = load_pipeline(ref, device=args.device or settings.device, dtype=args.dtype or settings.dtype,
                              offline=settings.offline)
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    ckpt = checkpoint_path(args.out)
    stop = threading.Event()
    bar = tqdm(total=config.steps, unit="step", desc=f"training {config.kind} ({config.method})",
               disable=args.no_progress, dynamic_ncols=True)

    def on_progress(p) -> None:
        bar.n = p.step
        bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        bar.refresh()

    store = class_image_store(settings) if config.method == "dreambooth" else None
    trainer = trainer_from_photos(pipe, photos, config, base_model_id=str(ref), progress=on_progress, store=store,
                                  should_stop=stop.is_set, on_checkpoint=lambda _s, blob: write_atomic(ckpt, blob))
    if args.resume and ckpt.is_file():
        try:
            trainer.load_state_dict(ckpt.read_bytes())
        except Exception:  # noqa: BLE001 - checked above; anything left (another base model's tensors) is the same
            bar.close()
            raise unusable(ckpt, "it does not fit this model") from None
        bar.n = bar.initial = trainer.step
        bar.refresh()
        print(f"resuming from {ckpt} at step {trainer.step}/{config.steps}")
    elif args.resume:
        print(f"no checkpoint at {ckpt}: starting from step 0")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: stop after this step
    started, first = time.monotonic(), trainer.step
    try:
        with trainer:
            trainer.run(max_steps=args.slice_steps)
            bar.close()
            elapsed = time.monotonic() - started
            rate = (trainer.step - first) / elapsed if elapsed > 0 else 0.0
            if not trainer.done:
                write_atomic(ckpt, trainer.state_dict())
                why = "interrupted" if trainer.stopped else "paused"
                print(f"{why} at step {trainer.step}/{config.steps}; checkpoint {ckpt} — continue with --resume")
                return 130 if trainer.stopped else EXIT_NOT_FINISHED
            art = trainer.artifact()
            data = save_artifact(art, args.out)
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    ckpt.unlink(missing_ok=True)
    print(f"wrote {args.out} ({len(data):,} bytes, {config.steps} steps, {elapsed:.1f}s, {rate:.1f} steps/s, "
          f"final loss {trainer.last_loss:.4f})")
    extra = art.extra if config.method == "dreambooth" else {}
    if extra:
        print(f"delta: rank {extra['delta_rank']} on {extra['delta_layers']} layers, relative reconstruction error "
              f"{float(extra['delta_rel_error']):.4f}, {len(data):,} bytes (the full delta: "
              f"{int(extra['delta_full_bytes_fp16']):,} bytes in fp16)")
    return 0


def class_image_store(settings):
    """The artifact store the worker uses too, so DreamBooth's class images are shared (None: unreachable)."""
    from storage import StorageError, open_store

    try:
        return open_store(settings)
    except (StorageError, OSError) as exc:
        print(f"note: no artifact store ({exc}); class images are drawn for this run only", file=sys.stderr)
        return None


def load_pipeline(ref: str, *, device: str, dtype: str, offline: bool):
    """The base pipeline via ``training.models`` (hub id, folder or single file)."""
    from training.models import load_base_pipeline

    pipe = load_base_pipeline(ref, device=device, dtype=dtype, offline=offline, safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
