"""LoRA on a resident model, injected with peft only while the trainer runs, then removed exactly.

The trainable ``lora_A``/``lora_B`` tensors are owned here (fp32, on the training device) and survive between
slices. ``attached(model)`` injects a peft LoRA adapter under a unique name, points peft's layers at our tensors,
makes it the only active adapter (other adapters the worker keeps resident are switched off for the duration),
and on exit deletes the adapter, unwraps every layer peft wrapped for it, and restores active adapters,
``requires_grad`` flags and ``peft_config`` as they were. Keys follow ``peft.get_peft_model_state_dict``:
``"<module path>.lora_A.weight"`` without an adapter name.
"""

from __future__ import annotations

import contextlib
import math
import uuid
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def _base(module: nn.Module) -> nn.Module:
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) else module


def _is_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def find_targets(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(path, in_features, out_features)`` of the Linear layers whose path ends with one of ``targets``."""
    found = []
    for name, module in model.named_modules():
        if ".base_layer" in name or not any(name == t or name.endswith("." + t) for t in targets):
            continue
        base = _base(module)
        if isinstance(base, nn.Linear):
            found.append((name, base.in_features, base.out_features))
    return sorted(found)


class LoraParams(nn.Module):
    """LoRA factors for each target layer: A (r, in) Kaiming-uniform from ``generator``, B (out, r) zeros."""

    def __init__(self, model: nn.Module, targets: Sequence[str], rank: int, alpha: float,
                 *, generator: torch.Generator, device: torch.device | str = "cpu"):
        super().__init__()
        self.rank, self.alpha = rank, float(alpha)
        self.layers = find_targets(model, targets)
        if not self.layers:
            raise ValueError(f"no LoRA target layers {tuple(targets)} in {type(model).__name__}")
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        for _, fan_in, fan_out in self.layers:
            bound = 1.0 / math.sqrt(fan_in)  # = kaiming_uniform_(a=sqrt(5)), peft's default for lora_A
            a = (torch.rand(rank, fan_in, generator=generator) * 2 - 1) * bound
            self.A.append(nn.Parameter(a.to(device)))
            self.B.append(nn.Parameter(torch.zeros(fan_out, rank, device=device)))

    def named_tensors(self) -> dict[str, nn.Parameter]:
        """peft-style keys -> our parameters (stable order)."""
        out: dict[str, nn.Parameter] = {}
        for (path, _, _), a, b in zip(self.layers, self.A, self.B, strict=True):
            out[f"{path}.lora_A.weight"] = a
            out[f"{path}.lora_B.weight"] = b
        return out

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in self.named_tensors().items()}

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[str]:
        """Inject into ``model`` for the block; yields the adapter name. Restores ``model`` exactly on exit."""
        from peft import LoraConfig, inject_adapter_in_model

        name = f"kbtrain_{uuid.uuid4().hex[:12]}"
        grads = [(p, p.requires_grad) for p in model.parameters()]
        before = {n: m for n, m in model.named_modules() if _is_tuner_layer(m)}
        layer_state = {n: (m._active_adapter, m._disable_adapters) for n, m in before.items()}
        had_config = "peft_config" in model.__dict__
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, init_lora_weights=False,
                            target_modules=[p for p, _, _ in self.layers])
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*peft_config.*")  # resident adapters: expected
                inject_adapter_in_model(config, model, adapter_name=name)
            for (path, _, _), a, b in zip(self.layers, self.A, self.B, strict=True):
                layer = model.get_submodule(path)
                layer.lora_A[name].weight = a
                layer.lora_B[name].weight = b
            for _, m in model.named_modules():
                if _is_tuner_layer(m):
                    m._active_adapter = [name] if name in m._all_available_adapter_names() else []
                    m._disable_adapters = False
            yield name
        finally:
            self._detach(model, name, before, layer_state, had_config)
            for p, flag in grads:
                p.requires_grad_(flag)

    @staticmethod
    def _detach(model: nn.Module, name: str, before: dict, layer_state: dict, had_config: bool) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path, module in list(model.named_modules()):
                if not _is_tuner_layer(module):
                    continue
                if name in module._all_available_adapter_names():
                    module.delete_adapter(name)
                if path in before:
                    module._active_adapter, module._disable_adapters = layer_state[path]
                elif not module._all_available_adapter_names():
                    parent_path, _, child = path.rpartition(".")
                    parent = model.get_submodule(parent_path) if parent_path else model
                    setattr(parent, child, module.get_base_layer())
        cfg = model.__dict__.get("peft_config")
        if isinstance(cfg, dict):
            cfg.pop(name, None)
            if not had_config:
                del model.__dict__["peft_config"]
