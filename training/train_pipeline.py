"""Everything a training slice changes on the shared, resident pipeline — and undoes in ``finally``.

Between slices (and after a failed one) the pipeline is bit-identical to what it was, so generation jobs that
run between two slices of someone's training see the base model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from training.config import TrainConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def training_mode(pipe: Any, config: TrainConfig, device: torch.device,
                  attachments: Sequence[contextlib.AbstractContextManager]) -> Iterator[None]:
    """Freeze the base weights, enter ``attachments`` (the trainer's TI hook and LoRA adapters), and apply the
    config's speed switches (gradient checkpointing; on CUDA TF32 and xformers); all undone on exit."""
    modules = [m for m in (pipe.unet, pipe.text_encoder, pipe.vae) if m is not None]
    grads = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    cuda = device.type == "cuda"
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    had_ckpt = bool(getattr(pipe.unet, "is_gradient_checkpointing", False))
    processors = None
    try:
        with contextlib.ExitStack() as stack:
            try:
                for m in modules:
                    m.requires_grad_(False)
                for attachment in attachments:
                    stack.enter_context(attachment)
                if config.gradient_checkpointing and not had_ckpt:
                    pipe.unet.enable_gradient_checkpointing()
                if cuda and config.allow_tf32:
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
                if cuda and config.use_xformers and importlib.util.find_spec("xformers") is not None:
                    processors = pipe.unet.attn_processors
                    try:
                        pipe.unet.enable_xformers_memory_efficient_attention()
                    except Exception as exc:  # a broken/mismatched xformers build: PyTorch SDPA instead
                        log.warning("xformers unavailable (%s); using PyTorch SDPA", exc)
                yield
            finally:
                if processors is not None:
                    pipe.unet.set_attn_processor(processors)
                if config.gradient_checkpointing and not had_ckpt:
                    pipe.unet.disable_gradient_checkpointing()
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
                # (the ExitStack detaches TI and LoRA after this block)
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
