"""Subcommands of the training library. Torch-free at import time; heavy imports inside each command."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny-model", help="build the tiny offline SD-1.5-shaped test model into DIR")
    p.add_argument("dir", help="output folder (a diffusers pipeline)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_tiny_model)


def _make_tiny_model(args: argparse.Namespace, settings) -> int:
    from training.tiny import make_tiny_model

    out = make_tiny_model(args.dir, seed=args.seed)
    print(f"tiny model written to {out}")
    return 0
