"""Pivotal tuning's schedule: which parameter groups train at a given step, and their learning rates.

PTI (cloneofsimo/lora, and the "pivotal" idea of Roich et al.): steps ``[0, ti_steps)`` train only the TI vectors
(the UNet LoRA stays at its zero start, so the pipeline is still the base model); steps ``[ti_steps, steps)``
train the UNet LoRA around the now-fixed "pivot" vectors. Freezing the vectors in phase 2 lets the trainer cache
the text embeddings for that phase (no text-encoder forward/backward), so phase 2 costs what plain LoRA costs.

The same function serves the plain methods: TI trains only vectors, LoRA only LoRA (and the text LoRA).
The learning rate is a pure function of the step (linear warm-up, then constant), so a resumed run needs no
scheduler state beyond the step.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.config import TrainConfig


@dataclass(frozen=True)
class Phase:
    ti: bool  # TI vectors train
    unet: bool  # UNet LoRA trains
    text: bool  # text-encoder LoRA trains

    @property
    def text_frozen(self) -> bool:
        """Nothing on the text side changes: text embeddings can be cached."""
        return not (self.ti or self.text)


def phase_at(config: TrainConfig, step: int) -> Phase:
    if config.method == "ti":
        return Phase(ti=True, unet=False, text=False)
    if config.method == "lora":
        return Phase(ti=False, unet=True, text=config.text_lora)
    if config.method == "hypernetwork":  # only its MLPs train (group "hyper"); the text side is frozen
        return Phase(ti=False, unet=False, text=False)
    in_ti = step < config.ti_steps
    return Phase(ti=in_ti, unet=not in_ti, text=False)


def learning_rates(config: TrainConfig, step: int) -> dict[str, float]:
    """Learning rate of each parameter group ("ti", "unet", "text", "hyper") at ``step``; 0 for a frozen group."""
    phase = phase_at(config, step)
    start = config.ti_steps if (config.method == "pivotal" and phase.unet) else 0
    warm = config.lr_warmup_steps
    factor = min(1.0, (step - start + 1) / warm) if warm > 0 else 1.0
    return {
        "ti": config.lr_ti * factor if phase.ti else 0.0,
        "unet": config.lr_unet * factor if phase.unet else 0.0,
        "text": config.lr_text * factor if phase.text else 0.0,
        "hyper": config.lr_hyper * factor if config.method == "hypernetwork" else 0.0,
    }
