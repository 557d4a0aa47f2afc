"""``kitbooth hypernetwork``: A1111-compatible hypernetworks. Torch-free at import time (heavy imports inside).

    kitbooth hypernetwork inspect FILE                      structure, sizes, step, base model of a .pt/.safetensors
    kitbooth hypernetwork convert FILE --out OUT            .pt (A1111) <-> .safetensors, by OUT's suffix
    kitbooth hypernetwork train --photos DIR --out OUT [--base-model REF] [--steps N] [--layer-structure 1,2,1]
                                [--activation relu] [--layer-norm] [--dropout] [--lr 1e-5] [--resolution 512]

Every argument is checked before any work (one line, exit 1, nothing written). Training uses every image in
``--photos`` (no face checks: hypernetworks suit kits and styles), the kind's caption templates and the settings'
base model unless ``--base-model`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kitbooth import limits
from training import cli_checks as check

HELP = "inspect, convert or train AUTOMATIC1111-compatible hypernetworks (.pt / .safetensors)"
SUFFIXES = (".pt", ".safetensors")


def register(sub: argparse._SubParsersAction) -> None:
    p = check.one_line_errors(sub.add_parser("hypernetwork", help=HELP, description=__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter), "hypernetwork")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ins = check.one_line_errors(actions.add_parser("inspect", help="describe a hypernetwork file"), "hypernetwork")
    ins.add_argument("file", type=Path)
    ins.set_defaults(func=check.first(lambda a: check.input_file(a.file, "FILE"), _inspect))
    conv = check.one_line_errors(actions.add_parser("convert", help=".pt <-> .safetensors"), "hypernetwork")
    conv.add_argument("file", type=Path)
    conv.add_argument("--out", required=True, type=Path, help="OUT.pt (A1111) or OUT.safetensors")
    conv.set_defaults(func=check.first(_check_convert, _convert))
    tr = check.one_line_errors(actions.add_parser("train", help="train one from a folder of images"), "hypernetwork")
    tr.add_argument("--photos", required=True, type=Path)
    tr.add_argument("--out", required=True, type=Path, help="OUT.pt (A1111) or OUT.safetensors")
    tr.add_argument("--kind", default="style", choices=("face", "kit", "style"), help="caption templates")
    tr.add_argument("--base-model", help="hub id, local diffusers folder or .safetensors (default: settings)")
    tr.add_argument("--steps", type=int, default=400)
    tr.add_argument("--resolution", type=int, default=512)
    tr.add_argument("--layer-structure", default="1,2,1", help="width multipliers, first and last 1")
    tr.add_argument("--activation", default="linear", help="linear, relu, leakyrelu, elu, swish, tanh, sigmoid...")
    tr.add_argument("--layer-norm", action="store_true")
    tr.add_argument("--dropout", action="store_true", help="A1111's dropout (0.3 after hidden layers)")
    tr.add_argument("--lr", type=float, default=1e-5)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default=None)
    tr.add_argument("--dtype", default=None)
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=check.first(_check_train, _train))


def _suffix(path: Path, option: str) -> None:
    if path.suffix.lower() not in SUFFIXES:
        raise check.BadArgument(f"{option} must end in .pt (A1111) or .safetensors, not {path.name!r}.")


def _check_convert(args: argparse.Namespace) -> None:
    check.input_file(args.file, "FILE")
    check.output_file(args.out, "--out")
    _suffix(args.out, "--out")


def layer_structure(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise check.BadArgument(f"--layer-structure must be numbers separated by commas, like 1,2,1, not {text!r}.") from None


def _check_train(args: argparse.Namespace) -> None:
    from training.hypernetwork import ACTIVATIONS

    check.input_dir(args.photos, "--photos")
    check.output_file(args.out, "--out")
    _suffix(args.out, "--out")
    check.base_model(args.base_model)
    check.integer(args.steps, "--steps", 1, limits.TRAIN_STEPS_MAX)
    check.side(args.resolution, "--resolution")
    check.real(args.lr, "--lr", 1e-8, 1.0)
    check.seed(args.seed)
    ls = layer_structure(args.layer_structure)
    if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1 or any(m <= 0 or m > 8 for m in ls):
        raise check.BadArgument("--layer-structure must start and end with 1, with widths up to 8, like 1,2,1.")
    if args.activation.lower() not in ACTIVATIONS:
        raise check.BadArgument(f"--activation must be one of {', '.join(sorted(ACTIVATIONS))}.")


def _load(path: Path):
    from training.hypernetwork_files import load_any

    return load_any(path.read_bytes())


def _save(net, out: Path) -> int:
    from training.artifact import write_atomic
    from training.hypernetwork_files import save_a1111, save_safetensors

    data = save_a1111(net) if out.suffix.lower() == ".pt" else save_safetensors(net)
    write_atomic(out, data)
    return len(data)


def _inspect(args: argparse.Namespace, settings) -> int:
    net = _load(args.file)
    c = net.config
    params = sum(p.numel() for p in net.parameters())
    print(f"{args.file.name}: hypernetwork {net.name!r}, step {net.step}, base {net.sd_checkpoint_name or '?'}")
    print(f"  sizes {', '.join(str(s) for s in c.sizes)}; layer structure {','.join(f'{m:g}' for m in c.layer_structure)}; "
          f"activation {c.activation_func}; layer norm {'yes' if c.is_layer_norm else 'no'}; "
          f"dropout {','.join(f'{p:g}' for p in c.dropouts)}; {params:,} parameters")
    return 0


def _convert(args: argparse.Namespace, settings) -> int:
    size = _save(_load(args.file), args.out)
    print(f"wrote {args.out} ({size:,} bytes)")
    return 0


def _train(args: argparse.Namespace, settings) -> int:
    import io

    from PIL import Image
    from tqdm.auto import tqdm

    from kitbooth.errors import UserFacingError
    from training.cli_train import load_pipeline
    from training.config import default_config
    from training.hypernetwork_train import HypernetworkTrainer

    photos, skipped = check.photo_files(args.photos)
    if skipped:
        print(check.skipped_line(skipped))
    images = []
    for name, data in photos:
        try:
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        except OSError:
            print(f"skipped {name}: not a readable image")
    if not images:
        print(f"No readable images in {args.photos}: {args.out} was not written.", file=sys.stderr)
        return 1
    ref = args.base_model or settings.base_model
    try:
        pipe = load_pipeline(ref, device=args.device or settings.device, dtype=args.dtype or settings.dtype,
                              offline=settings.offline)
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return check.EXIT_BAD_INPUT
    cfg = default_config(args.kind, method="hypernetwork", steps=args.steps, resolution=args.resolution,
                         seed=args.seed, masked_loss=False, checkpoint_every=0, lr_hyper=args.lr,
                         hyper_layer_structure=layer_structure(args.layer_structure),
                         hyper_activation=args.activation.lower(), hyper_layer_norm=args.layer_norm,
                         hyper_dropout=args.dropout)
    bar = tqdm(total=cfg.steps, unit="step", desc="training hypernetwork", disable=args.no_progress)

    def progress(p) -> None:
        bar.n = p.step
        bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        bar.refresh()

    trainer = HypernetworkTrainer(pipe, images, cfg, name=args.out.stem, base_model_id=str(ref), progress=progress)
    try:
        trainer.run()
    finally:
        bar.close()
    size = _save(trainer.network, args.out)
    print(f"wrote {args.out} ({size:,} bytes, {trainer.step} steps, final loss {trainer.last_loss:.4f})")
    return 0
