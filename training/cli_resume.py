"""``kitbooth train --resume``: is the checkpoint beside ``--out`` one this run can continue? (imports torch)

Checked before any photo is read or model loaded. Every unusable file — truncated, another program's, a pickle
with objects, a KitBooth checkpoint missing fields or made with another config — gets the same one sentence
that says how to start fresh; torch's own error (and its advice on loading unsafe files) is never relayed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ckpt
from training.cli_checks import BadArgument
from training.config import TrainConfig
from training.sliced_trainer import RESUME_FREE

# What Trainer.load_state_dict reads, and the type each must have.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "config": str, "step": int, "params": dict, "optimizer": dict, "scaler": dict, "generator": torch.Tensor,
    "rng": dict, "latents": torch.Tensor, "weights": (torch.Tensor, type(None)),
    "sample_image": (list, tuple), "captions": str,
}


def unusable(path: Path, why: str) -> BadArgument:
    return BadArgument(f"{path} can't be used to resume ({why}) — delete it to start fresh, or run without "
                       "--resume.")


def check_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint's state when ``Trainer.load_state_dict`` can use it with ``config``; else ``BadArgument``."""
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles are not the user's business
            warnings.simplefilter("ignore")
            state = ckpt.loads(path.read_bytes())
    except ckpt.BadCheckpoint:
        raise unusable(path, "it is not a readable KitBooth training checkpoint") from None
    except OSError as exc:
        raise unusable(path, exc.strerror or "unreadable") from None
    missing = [k for k, t in FIELDS.items() if not isinstance(state.get(k), t)]
    if missing:
        raise unusable(path, f"it lacks {', '.join(missing[:3])}")
    try:
        theirs = TrainConfig.from_json(state["config"])
    except (ValueError, TypeError, KeyError, json.JSONDecodeError):
        raise unusable(path, "its training settings are unreadable") from None
    diff = sorted(k for k, v in vars(config).items() if k not in RESUME_FREE and getattr(theirs, k, None) != v)
    if diff:
        raise unusable(path, f"it was made with other settings: {', '.join(diff[:4])}")
    if not 0 <= state["step"] <= config.steps:
        raise unusable(path, f"its step {state['step']} is outside 0..{config.steps}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["params"].items()):
        raise unusable(path, "its weights are not tensors")
    return state
