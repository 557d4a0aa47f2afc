"""DreamBooth on the tiny model for tests: a small config (64², 2 class images of 2 steps) and a trained trainer."""

from __future__ import annotations

import torch

from tests.training.concepts import synthetic_images
from training.config import TrainConfig, default_config
from training.dreambooth import DreamBoothTrainer


def db_config(kind: str = "face", **kw) -> TrainConfig:
    base = dict(method="dreambooth", resolution=64, steps=12, num_class_images=2, class_steps=2, lr_unet=1e-3,
                checkpoint_every=0, masked_loss=False, overfit_fixed_batch=True)
    base.update(kw)
    return default_config(kind, **base)


def trained(pipe, store=None, steps: int = 12, **kw) -> DreamBoothTrainer:
    """A DreamBooth trainer after ``steps`` steps on the synthetic images (not closed: the caller closes it)."""
    tr = DreamBoothTrainer(pipe, synthetic_images(), db_config(steps=steps, **kw), base_model_id="tiny", store=store)
    tr.run()
    return tr


def probe(model) -> torch.Tensor:
    """The UNet's noise prediction on one fixed input (latents, two timesteps, a random text embedding)."""
    g = torch.Generator().manual_seed(0)
    x, enc = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([10, 500]), enc).sample


def merged_unet(pipe, lora: dict[str, torch.Tensor]):
    """A copy of the base UNet with ``lora`` (peft keys, scale 1) merged into its weights."""
    import copy

    unet = copy.deepcopy(pipe.unet)
    mods = dict(unet.named_modules())
    with torch.no_grad():
        for key in {k.rsplit(".lora_", 1)[0] for k in lora}:
            a, b = lora[f"{key}.lora_A.weight"].float(), lora[f"{key}.lora_B.weight"].float()
            w = mods[key].weight
            w += (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)).reshape(w.shape)
    return unet


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
