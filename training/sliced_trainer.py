"""What every trainer shares: the sliced run loop, progress, checkpoints, and the resume check.

A trainer says what it trains (``_named_params``), how one step goes (``_train_step``), what it prepares before
a slice (``_prepare``), what it attaches to the pipeline during one (``_attached``), and any state of its own in
a checkpoint (``_extra_state`` / ``_load_extra``). ``training.loop.Trainer`` (TI, LoRA, pivotal, hypernetworks)
and ``training.dreambooth.DreamBoothTrainer`` are the two kinds; the worker and the CLI drive either the same way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from training import checkpoint as ckpt
from training.config import TrainConfig

log = logging.getLogger(__name__)

# Config fields that may differ between the job that wrote a checkpoint and the one resuming it.
RESUME_FREE = {"checkpoint_every", "mixed_precision", "gradient_checkpointing", "use_xformers", "allow_tf32"}


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    eta_seconds: float


class SlicedTrainer:
    """The ``Trainer`` interface: ``run(max_steps=, max_seconds=)`` in slices, ``state_dict()`` bytes that a new
    trainer in another process resumes from with ``load_state_dict()``, ``artifact()``, ``close()``."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    data: Any  # training.train_step.BatchSource

    def __init__(self, pipe, config: TrainConfig, *, base_model_id: str = "",
                 progress: Callable[[Progress], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 on_checkpoint: Callable[[int, bytes], None] | None = None):
        self.pipe = pipe
        self.config = config
        self.base_model_id = base_model_id
        self.progress = progress
        self.should_stop = should_stop
        self.on_checkpoint = on_checkpoint
        self.device = pipe.unet.device
        self.stopped = False
        self._closed = False
        self._step = 0
        self._last_loss = float("nan")

    @classmethod
    def from_photos(cls, pipe, photos: Sequence[Any], config: TrainConfig, **kwargs: Any):
        """Build from ``training.faces`` prepared photos (objects with ``.image``, ``.mask``, ``.caption``)."""
        return cls(pipe, [p.image for p in photos], config, masks=[getattr(p, "mask", None) for p in photos],
                   captions=[getattr(p, "caption", None) for p in photos], **kwargs)

    @property
    def step(self) -> int:
        return self._step

    @property
    def done(self) -> bool:
        return self._step >= self.config.steps

    @property
    def last_loss(self) -> float:
        return self._last_loss

    def run(self, *, max_steps: int | None = None, max_seconds: float | None = None) -> int:
        """Train until the job is done, ``max_steps`` more steps were taken, ``max_seconds`` passed, or
        ``should_stop()`` returned True (checked before every step). Returns the step reached."""
        if self._closed:
            raise RuntimeError("trainer is closed")
        self.stopped = False
        target = self.config.steps if max_steps is None else min(self.config.steps, self._step + max_steps)
        if self._step >= target:
            return self._step
        started, first = time.monotonic(), self._step
        self._prepare()
        if self.stopped:  # the preparation itself saw the stop flag (DreamBooth drawing its class images)
            return self._step
        with self._attached():
            while self._step < target:
                if self.should_stop is not None and self.should_stop():
                    self.stopped = True
                    break
                if max_seconds is not None and time.monotonic() - started >= max_seconds:
                    break
                self._last_loss = self._train_step()
                self._step += 1
                if self.progress is not None:
                    per_step = (time.monotonic() - started) / (self._step - first)
                    self.progress(Progress(self._step, self.config.steps, self._last_loss,
                                           per_step * (self.config.steps - self._step)))
                every = self.config.checkpoint_every
                if self.on_checkpoint is not None and every > 0 and self._step % every == 0 and not self.done:
                    self.on_checkpoint(self._step, self.state_dict())
        log.info("trained %s/%s %s steps %d->%d in %.2fs (loss %.4f)", self.config.kind, self.config.method,
                 "stopped" if self.stopped else "slice", first, self._step, time.monotonic() - started,
                 self._last_loss)
        return self._step

    def state_dict(self) -> bytes:
        """A checkpoint (bytes): trainable tensors, optimizer, scaler, generator and RNG states, step, cached
        latents and captions (and the trainer's own extra state)."""
        return ckpt.dumps({
            **self.data.state(), **self._extra_state(),
            "config": self.config.to_json(),
            "step": self._step,
            "params": {k: v.detach().cpu().clone() for k, v in self._named_params().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": ckpt.capture_rng(),
        })

    def load_state_dict(self, data: bytes) -> None:
        """Resume from ``state_dict()`` bytes (refused if they come from a job with another config)."""
        state = ckpt.loads(data)
        theirs = TrainConfig.from_json(state["config"])
        diff = [k for k, v in vars(self.config).items() if k not in RESUME_FREE and getattr(theirs, k) != v]
        if diff:
            raise ckpt.BadCheckpoint(f"checkpoint is from a job with another config ({', '.join(sorted(diff))})")
        params = self._named_params()
        if set(params) != set(state["params"]):
            raise ckpt.BadCheckpoint("checkpoint tensors do not match this trainer (another base model?)")
        with torch.no_grad():
            for k, p in params.items():
                src = state["params"][k]
                if src.shape != p.shape:
                    raise ckpt.BadCheckpoint(f"checkpoint tensor {k} has shape {tuple(src.shape)}, "
                                             f"expected {tuple(p.shape)} (another base model?)")
                p.copy_(src.to(p.device, p.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng(state["rng"])
        self.data.load(state)
        self._load_extra(state)
        self._step = int(state["step"])

    def close(self) -> None:
        self._closed = True
        self.optimizer.state.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what each trainer says ---------------------------------------------------------------------
    def _named_params(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def _train_step(self) -> float:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Before a slice or a checkpoint: the cached latents (and whatever else the trainer draws once); sets
        ``stopped`` when ``should_stop`` cut it short."""
        self.data.ensure()

    def _attached(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: dict[str, Any]) -> None:
        """After the tensors are restored (clear caches computed from the old ones)."""
