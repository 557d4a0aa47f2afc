"""``kitbooth import FILE --kind kit|style --out FILE``: a community file as a KitBooth concept. Torch-free at
import time (the validator and the artifact writer are imported by the command).

The file goes through the one validator (``training.formats.import_file``) as the kind asked for, so a KitBooth
face is refused here as it is by ``/kit import`` (consent); A1111 ``.pt`` embeddings are read without unpickling
objects. The result is our own format (``training.artifact``), with the base model as a hub id or file name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training import cli_checks as check

HELP = "turn a community LoRA or embedding into a KitBooth kit or style concept file"


def register(sub: argparse._SubParsersAction) -> None:
    p = check.one_line_errors(sub.add_parser("import", help=HELP, description=__doc__), "import")
    p.add_argument("file", help="the LoRA or embedding (.safetensors, or an A1111 .pt embedding)")
    p.add_argument("--kind", required=True, choices=("kit", "style"))
    p.add_argument("--out", required=True, type=Path, help="KitBooth concept file to write (.safetensors)")
    p.add_argument("--trigger", default=None, help="trigger word of a LoRA (default: from the file name)")
    p.set_defaults(func=check.first(_check, _import))


def _check(args: argparse.Namespace) -> None:
    src = check.input_file(args.file, "FILE")
    out = check.output_file(args.out, "--out")
    check.trigger_word(args.trigger)
    if out.resolve() == src.resolve():
        raise check.BadArgument("--out is the file being imported — give another file name.")


def _import(args: argparse.Namespace, settings) -> int:
    from training.artifact import save_artifact
    from training.exports import public_base_model
    from training.formats import import_file

    art = import_file(Path(args.file), kind=args.kind, trigger=args.trigger,
                      base_model=public_base_model(settings.base_model))
    data = save_artifact(art, args.out)
    print(f"wrote {args.out} ({len(data):,} bytes): a {art.kind}, {art.extra.get('source_format', 'kitbooth')} "
          f"file; trigger {art.trigger}")
    return 0
