"""A fine-tuned model stored as its difference from the base: per layer, a truncated SVD of ``W_tuned - W_base``.

Each ``nn.Linear`` / ``nn.Conv2d`` weight's delta is reshaped to 2-D (a conv's ``(out, in, kh, kw)`` to
``(out, in*kh*kw)``, as kohya's LoCon does) and factored ``ΔW ≈ U_k S_k V_kᵀ``. The factors are written as a
LoRA pair, so the file composes and exports exactly like a LoRA: ``B = U_k √S_k`` (``lora_B``, a 1×1 conv for a
conv layer) and ``A = √S_k V_kᵀ`` (``lora_A``, a conv with the layer's own kernel), alpha = rank (scale 1).
Every layer gets the same rank (the file format has one): a layer whose delta has fewer dimensions than the rank
is zero-padded, which changes nothing (``B @ A`` is the same).

``rel_error`` is ‖ΔW − U_k S_k V_kᵀ‖_F / ‖ΔW‖_F over all layers together (the discarded singular values' energy),
computed from the singular values themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeltaReport:
    rank: int
    layers: int
    rel_error: float  # aggregated over every layer (Frobenius)
    worst_layer_error: float
    parameters: int  # in the factors (what the file holds)
    full_parameters: int  # in the full deltas of the same layers

    def as_metadata(self) -> dict[str, str]:
        return {"delta_rank": str(self.rank), "delta_layers": str(self.layers),
                "delta_rel_error": f"{self.rel_error:.6f}", "delta_worst_layer_error": f"{self.worst_layer_error:.6f}",
                "delta_parameters": str(self.parameters), "delta_full_parameters": str(self.full_parameters),
                "delta_bytes_fp16": str(2 * self.parameters), "delta_full_bytes_fp16": str(2 * self.full_parameters)}


def weight_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(path, module) of every plain Linear / Conv2d of ``model`` (text paths without ``text_model.``)."""
    for name, mod in model.named_modules():
        if type(mod) in (torch.nn.Linear, torch.nn.Conv2d) and "lora_" not in name:
            path = name.removesuffix(".base_layer")
            yield path.removeprefix("text_model."), mod


def full_rank(shapes: Iterable[torch.Size]) -> int:
    """The rank that keeps every layer's delta exactly (the largest min dimension of the weight shapes)."""
    return max((min(s[0], math.prod(s[1:])) for s in shapes), default=1)


def compress(deltas: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
             rank: int) -> tuple[dict[str, torch.Tensor], DeltaReport]:
    """peft-keyed LoRA tensors (``<path>.lora_A.weight`` / ``.lora_B.weight``, fp32 CPU) of ``deltas``
    (path -> ΔW, a layer's weight shape; or (path, ΔW) pairs, made one at a time so a full-size UNet's deltas
    never all exist at once) at ``rank``, and the report. Layers whose delta is all zero are left out."""
    if rank < 1:
        raise ValueError("rank must be positive")
    pairs = deltas.items() if isinstance(deltas, Mapping) else deltas
    out: dict[str, torch.Tensor] = {}
    kept = total = 0.0
    worst = 0.0
    params = full = layers = 0
    for path, delta in pairs:
        d2 = delta.detach().float().reshape(delta.shape[0], -1)
        if not torch.any(d2):
            continue
        u, s, vh = torch.linalg.svd(d2, full_matrices=False)
        k = min(rank, s.numel())
        energy, tail = float((s.double() ** 2).sum()), float((s[k:].double() ** 2).sum())
        total, kept = total + energy, kept + tail
        worst = max(worst, math.sqrt(tail / energy))
        root = s[:k].sqrt()
        b, a = u[:, :k] * root, root[:, None] * vh[:k]
        if k < rank:
            b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
            a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])])
        if delta.dim() == 4:
            a, b = a.reshape(rank, *delta.shape[1:]), b.reshape(*b.shape, 1, 1)
        out[f"{path}.lora_A.weight"] = a.cpu().contiguous()
        out[f"{path}.lora_B.weight"] = b.cpu().contiguous()
        params += a.numel() + b.numel()
        full += d2.numel()
        layers += 1
    err = math.sqrt(kept / total) if total > 0 else 0.0
    return out, DeltaReport(rank, layers, err, worst, params, full)


def describe(extra: dict[str, str]) -> str:
    """One line about a DreamBooth file from its metadata (``kitbooth inspect``)."""
    if "delta_rank" not in extra:
        return "fine-tuned UNet delta (no SVD report in the file)"
    full = extra.get("full_delta") == "true"
    return (f"fine-tuned UNet stored as its delta from the base, {'full' if full else 'truncated'} SVD rank "
            f"{extra['delta_rank']} on {extra.get('delta_layers', '?')} layers, relative reconstruction error "
            f"{float(extra.get('delta_rel_error', 'nan')):.4f}, {int(extra.get('delta_bytes_fp16', 0)):,} bytes of "
            f"{int(extra.get('delta_full_bytes_fp16', 0)):,} for the full delta; prior preservation on "
            f"{extra.get('class_images', '?')} images of '{extra.get('class_word', '?')}' "
            f"(weight {extra.get('prior_loss_weight', '?')})")
