"""Resident LoRA adapters: each concept's LoRA injected once with peft and kept in a bounded LRU.

Loading a LoRA (inject + copy weights) costs far more than switching one on, so a concept's adapter stays in
the model between jobs under a name derived from its key, inactive until a composition activates it. The least
recently used adapter not needed by the current batch is deleted when the cache is full, so memory stays bounded;
a batch that needs more than the cache holds exceeds it for that call only (``trim`` afterwards).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from kitbooth.errors import IncompatibleArtifact

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass
class _Resident:
    adapter: str
    fingerprint: str
    in_unet: bool
    in_text: bool


def _fingerprint(art: Any) -> str:
    """Tells a retrained file under the same key apart from the resident one."""
    parts = (
        getattr(art, "method", ""), getattr(art, "created", ""), getattr(art, "steps", ""),
        getattr(art, "rank", ""), getattr(art, "alpha", ""), getattr(art, "version", ""),
        len(art.unet_lora or {}), len(art.text_lora or {}),
        tuple(sorted((art.unet_lora or {}).keys()))[:4],
    )
    h = hashlib.sha1(repr(parts).encode())
    for sd in (art.unet_lora or {}, art.text_lora or {}):  # a few tensor values: metadata alone can repeat
        for k in sorted(sd)[:2]:
            h.update(sd[k].detach().float().flatten()[:16].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _adapter_name(key: str) -> str:
    # peft adapter names become ModuleDict keys: no dots allowed.
    return "kb_" + hashlib.sha1(key.encode()).hexdigest()[:16]


def lora_layers(model: torch.nn.Module) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def lora_targets(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (lora_A weight, lora_B weight); refuses keys that are not plain LoRA."""
    out: dict[str, list[torch.Tensor | None]] = {}
    for k, v in sd.items():
        for i, suffix in enumerate(LORA_SUFFIXES):
            if k.endswith(suffix):
                out.setdefault(k[: -len(suffix)], [None, None])[i] = v
                break
        else:
            raise IncompatibleArtifact(f"This concept file has an unsupported LoRA tensor ({k}).")
    bad = [m for m, (a, b) in out.items() if a is None or b is None]
    if bad:
        raise IncompatibleArtifact(f"This concept file's LoRA is incomplete (layer {bad[0]}).")
    return {m: (a, b) for m, (a, b) in out.items()}  # type: ignore[misc]


class ResidentLoras:
    """The LRU of concept adapters on one pipeline's UNet and text encoder."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module, capacity: int):
        self.capacity = capacity
        self._models = {"unet": unet, "text": text_encoder}
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        self._modules = {part: dict(m.named_modules()) for part, m in self._models.items()}
        self._layers: dict[str, list[Any]] | None = None

    def keys(self) -> list[str]:
        """Concept keys whose LoRA is resident, least recently used first."""
        return list(self._resident)

    def __bool__(self) -> bool:
        return bool(self._resident)

    def in_text(self, key: str) -> bool:
        return self._resident[key].in_text

    # --- the base model's layers ---------------------------------------------------------------------------
    def find(self, part: str, name: str) -> Any:
        """The base layer ``name`` of ``part`` ("unet" or "text"), under any resident adapter; None if absent."""
        mods = self._modules[part]
        mod = mods.get(name)
        if mod is None and part == "text" and name.startswith("text_model."):
            mod = mods.get(name[len("text_model."):])
        if mod is not None and hasattr(mod, "get_base_layer"):
            mod = mod.get_base_layer()
        return mod if mod is not None and hasattr(mod, "weight") else None

    def _text_name(self, name: str) -> str:
        # transformers 5's CLIPTextModel has no "text_model." prefix; files written for older ones do.
        if name not in self._modules["text"] and name.startswith("text_model."):
            return name[len("text_model."):]
        return name

    def layers(self) -> dict[str, list[Any]]:
        """Every peft LoRA layer, per part (cached until :meth:`rescan`)."""
        if self._layers is None:
            self._layers = {part: lora_layers(m) for part, m in self._models.items()}
        return self._layers

    def rescan(self) -> None:
        """Forget the cached layer list (~1 ms to rebuild at full size): other code may add or remove layers."""
        self._layers = None

    # --- residency -------------------------------------------------------------------------------------------
    def ensure(self, key: str, art: Any, in_use: set[str]) -> str:
        """The adapter name of ``key``'s LoRA, injecting it first unless the same file is already resident."""
        fp = _fingerprint(art)
        res = self._resident.get(key)
        if res is not None and not self._present(res):
            # Someone else removed it from the model (e.g. an unload): forget it and load it again.
            log.warning("resident adapter %s for %s vanished from the model: reloading", res.adapter, key)
            self._resident.pop(key)
            res = None
        if res is not None and res.fingerprint == fp:
            self._resident.move_to_end(key)
            return res.adapter
        if res is not None:  # same key, different file: replace it
            self._evict(key)
        while len(self._resident) >= self.capacity:
            victim = next((k for k in self._resident if k not in in_use), None)
            if victim is None:
                break  # everything resident is used by this batch: exceed the bound until trim()
            self._evict(victim)
        name = _adapter_name(key)
        t0 = time.perf_counter()
        in_unet = self._inject("unet", art.unet_lora or {}, name, art)
        in_text = self._inject("text", art.text_lora or {}, name, art)
        self._resident[key] = _Resident(name, fp, in_unet, in_text)
        self._layers = None
        log.info("lora adapter %s loaded for %s in %.1f ms", name, key, (time.perf_counter() - t0) * 1e3)
        return name

    def trim(self) -> None:
        """Back to capacity, least recently used first."""
        while len(self._resident) > self.capacity:
            self._evict(next(iter(self._resident)))

    def evict(self, key: str) -> bool:
        """Delete one concept's resident adapter; False when it was not resident."""
        if key not in self._resident:
            return False
        self._evict(key)
        return True

    def evict_all(self) -> None:
        for key in list(self._resident):
            self._evict(key)

    def _present(self, res: _Resident) -> bool:
        layers = self.layers()
        return all(any(res.adapter in layer.lora_A for layer in layers[part])
                   for part, there in (("unet", res.in_unet), ("text", res.in_text)) if there)

    def _inject(self, part: str, sd: dict[str, torch.Tensor], name: str, art: Any) -> bool:
        if not sd:
            return False
        model = self._models[part]
        targets = lora_targets(sd)
        if part == "text":
            sd = {self._text_name(k[: -len(s)]) + s: v for k, v in sd.items() for s in LORA_SUFFIXES if k.endswith(s)}
            targets = {self._text_name(k): v for k, v in targets.items()}
        ranks = {m: a.shape[0] for m, (a, _) in targets.items()}
        r = max(set(ranks.values()), key=list(ranks.values()).count)
        alpha = float(art.alpha) if getattr(art, "alpha", None) is not None else None
        config = LoraConfig(
            r=r,
            lora_alpha=alpha if alpha is not None else r,
            target_modules=sorted(targets),
            rank_pattern={m: k for m, k in ranks.items() if k != r},
            alpha_pattern={} if alpha is not None else {m: k for m, k in ranks.items() if k != r},
            init_lora_weights=False,
            inference_mode=True,
        )
        p = next(model.parameters())
        sd = {k: v.detach().to(device=p.device, dtype=p.dtype) for k, v in sd.items()}
        with warnings.catch_warnings():  # "multiple adapters in the model": that is the point of the cache
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(config, model, adapter_name=name, low_cpu_mem_usage=True)
        result = set_peft_model_state_dict(model, sd, adapter_name=name, low_cpu_mem_usage=True)
        missing = [k for k in getattr(result, "missing_keys", []) if name in k and "lora_" in k]
        if missing:
            _delete(model, name)
            raise IncompatibleArtifact(f"This concept's LoRA could not be loaded ({missing[0]} missing).")
        for layer in lora_layers(model):  # resident but inactive until a composition activates it
            layer.enable_adapters(False)
        return True

    def _evict(self, key: str) -> None:
        res = self._resident.pop(key)
        if res.in_unet:
            _delete(self._models["unet"], res.adapter)
        if res.in_text:
            _delete(self._models["text"], res.adapter)
        self._layers = None
        log.info("lora adapter %s evicted (%s)", res.adapter, key)


def _delete(model: torch.nn.Module, name: str) -> None:
    with warnings.catch_warnings():  # "adapter was active which is now deleted": all are inactive here
        warnings.simplefilter("ignore", UserWarning)
        for layer in lora_layers(model):
            if name in layer.lora_A:
                layer.delete_adapter(name)
    cfg = getattr(model, "peft_config", None)
    if isinstance(cfg, dict):
        cfg.pop(name, None)
