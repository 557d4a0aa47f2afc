"""Subcommands contributed to ``kitbooth`` (see kitbooth/cli.py). Torch-free at import time."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``kitbooth bench``."""
    p = sub.add_parser(
        "bench",
        help="speed figures: ratios against baselines measured in the same run, sizes, GPU figures",
        description="Measure KitBooth's speed. Every ratio is against a baseline measured in the same run "
                    "(medians of repeats, warm-up excluded). Queue figures use KITBOOTH_REDIS_URL (the bench "
                    "starts nothing; without Redis they are null). --json writes exactly the documented keys.",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (under 2 minutes on a CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default cpu)")
    p.add_argument("--full-size", action="store_true",
                   help="real SD 1.5 architecture with random weights in fp16 (needs --device cuda); adds the "
                        "GPU-mode figures")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON (null where not measured)")
    p.add_argument("--only", action="append", choices=("sizes", "train", "swap", "batch", "levers", "queue", "bot", "gpu"),
                   help="run only this section (repeatable)")
    # Fewest repeats and smallest sizes: proves the command end to end in a few seconds (the smoke test).
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace, settings) -> int:
    from benchmarks.common import BenchError
    from benchmarks.run import render, run, write_json

    try:
        report = run(settings, quick=args.quick, smoke=args.smoke, device=args.device, full_size=args.full_size,
                     only=args.only, echo=lambda s: print(s, file=sys.stderr, flush=True))
    except BenchError as exc:
        print(f"kitbooth bench: {exc}", file=sys.stderr)
        return 2
    print(render(report, report.header))
    if args.json:
        write_json(report, args.json)
        print(f"\nwrote {args.json}")
    return 0
