"""Subcommands contributed to ``kitbooth`` (see kitbooth/cli.py). Torch-free at import time."""

from __future__ import annotations

import argparse


def _worker(args: argparse.Namespace, settings) -> int:
    overrides = {k: v for k, v in (("queue_name", args.queue), ("base_model", args.model),
                                   ("device", args.device), ("metrics_port", args.metrics_port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gpu_worker.worker import run_worker
    from kitbooth.errors import StorageError, UserFacingError
    from kitbooth.settings import redis_unreachable

    try:
        return run_worker(settings)
    except RedisConnectionError:
        raise UserFacingError(redis_unreachable(settings.redis_url)) from None
    except StorageError as exc:  # the store is probed at start: a missing bucket, refused keys, no answer
        raise UserFacingError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    """``kitbooth worker``: run the GPU worker (arq) with the base pipeline resident."""
    p = sub.add_parser("worker", help="run the GPU worker (training and generation jobs from Redis)")
    p.add_argument("--queue", help="arq queue name (default: KITBOOTH_QUEUE_NAME)")
    p.add_argument("--model", help="base model: hub id, diffusers folder or .safetensors")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.set_defaults(func=_worker)
