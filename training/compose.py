"""Compose several concepts (face + kit + style) on a resident pipeline for one call, then restore it exactly.

Cheap per job, unlike diffusers' ``load_textual_inversion``/``load_lora_weights`` and their unloads:

* **TI slots** (:mod:`training.ti_slots`): a pool of placeholder tokens added once; composing writes each
  concept's vectors into free rows and rewrites each request's prompt to its own slots.
* **Resident LoRA adapters** (:mod:`training.lora_residency`): injected once per concept, kept in a bounded LRU.
* **Hypernetworks** (A1111's, :mod:`training.hypernetwork`): built once per concept (bounded like the LoRAs) and
  applied by forward pre-hooks on each attention's ``to_k``/``to_v`` to the context rows of the requests that use
  them, at the concept's weight as A1111's strength; the hooks are the only change, removed on exit.
* **Per-sample adapters** (:mod:`training.composition`): when every request of the batch uses the same adapters
  with the same weights they are activated the way peft's ``set_adapters(names, weights)`` does; when requests
  differ a per-row forward hook applies each adapter to its own rows only. So any mix of concepts can share
  one pipeline call and :meth:`Composer.can_batch` only has to check the slot pool.

On exit (always, in ``finally``) the slot rows are zeroed, every LoRA layer is disabled and the hooks are
removed (the hypernetworks' too): the pipeline's output is bit-identical to the base pipeline's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kitbooth.errors import IncompatibleArtifact
from training.artifact import check_compatible
from training.composition import Composition
from training.hypernetwork import attention_modules, check_fits, network_from
from training.lora_residency import ResidentLoras, lora_targets
from training.ti_slots import SLOT_PREFIX, SlotPool

__all__ = ["SLOT_PREFIX", "Composer", "Composition", "ConceptUse"]


@dataclass(frozen=True)
class ConceptUse:
    """One concept used by one request: ``key`` identifies the artifact (e.g. its store key)."""

    key: str
    artifact: Any  # training.artifact.ConceptArtifact
    weight: float = 1.0


class Composer:
    """Applies concepts to one resident pipeline; see the module docstring."""

    def __init__(self, pipe: Any, *, slots: int = 32, lora_cache: int = 8):
        if slots < 1 or lora_cache < 1:
            raise ValueError("slots and lora_cache must be at least 1")
        self.pipe = pipe
        self._active: Composition | None = None
        self._slots = SlotPool(pipe.tokenizer, pipe.text_encoder, slots)
        self._loras = ResidentLoras(pipe.unet, pipe.text_encoder, lora_cache)
        self._nets: OrderedDict[str, tuple[Any, Any]] = OrderedDict()  # key -> (artifact, Hypernetwork)
        self.slot_tokens = self._slots.tokens
        self.slot_ids = self._slots.ids
        self.hidden_size = self._slots.hidden_size

    # --- capacity --------------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def lora_cache(self) -> int:
        return self._loras.capacity

    def resident_adapters(self) -> list[str]:
        """Concept keys whose LoRA is resident, least recently used first."""
        return self._loras.keys()

    def slots_needed(self, per_request: Sequence[Sequence[ConceptUse]]) -> int:
        return self._slots.needed(per_request)

    def can_batch(self, per_request: Sequence[Sequence[ConceptUse]]) -> bool:
        """Whether these requests fit one pipeline call (any LoRA mix does; only the slot pool can run out)."""
        return self.slots_needed(per_request) <= self.slots

    def evict(self, key: str) -> bool:
        """Delete one concept's resident adapter (e.g. its file was deleted); False when it was not resident."""
        return self._loras.evict(key)

    def evict_all(self) -> None:
        """Delete every resident adapter (e.g. before handing the pipeline to a trainer)."""
        self._loras.evict_all()

    # --- validation (no mutation) --------------------------------------------------------------------------
    def check(self, use: ConceptUse) -> None:
        """Raise :class:`IncompatibleArtifact` if the concept cannot be applied to this pipeline."""
        art = use.artifact
        check_compatible(art, self.pipe)
        hs = getattr(art, "hidden_size", None)
        if hs is not None and hs != self.hidden_size:
            raise IncompatibleArtifact(
                f"This concept was made for a model with text width {hs}, not {self.hidden_size} (another base model)."
            )
        if art.embeddings is not None:
            e = art.embeddings
            if e.dim() != 2 or e.shape[1] != self.hidden_size or e.shape[0] != len(art.tokens):
                raise IncompatibleArtifact(
                    f"This concept's embeddings have shape {tuple(e.shape)}; expected ({len(art.tokens)}, {self.hidden_size})."
                )
        if getattr(art, "hypernetwork", None):
            check_fits(self._network(use), self.pipe.unet)
        for part, sd in (("unet", art.unet_lora), ("text", art.text_lora)):
            for name, (a, b) in lora_targets(sd or {}).items():
                mod = self._loras.find(part, name)
                if mod is None:
                    raise IncompatibleArtifact(f"This concept's LoRA targets a layer the base model lacks ({name}).")
                w = mod.weight
                if a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
                    raise IncompatibleArtifact(
                        f"This concept's LoRA does not fit layer {name} (made for another base model)."
                    )

    # --- the context manager ----------------------------------------------------------------------------------
    @contextmanager
    def compose(self, per_request: Sequence[Sequence[ConceptUse]]) -> Iterator[Composition]:
        """Apply each request's concepts for the duration of the block; restore exactly on exit."""
        if self._active is not None:
            raise RuntimeError("a composition is already active on this pipeline")
        per_request = [list(uses) for uses in per_request]
        # Validate everything first, then mutate.
        for uses in per_request:
            for u in uses:
                self.check(u)
        need = self.slots_needed(per_request)
        if need > self.slots:
            raise ValueError(f"these concepts need {need} token slots; the pool has {self.slots}")

        comp = Composition(per_request)
        self._active = comp
        hooks: list[Any] = []
        written: list[int] = []
        try:
            self._slots.write(per_request, comp.rewrites, written)
            self._activate_loras(comp, hooks)
            self._activate_hypernetworks(comp, hooks)
            yield comp
        finally:
            self._restore(written, hooks)
            self._active = None

    def _activate_loras(self, comp: Composition, hooks: list[Any]) -> None:
        in_use = {u.key for uses in comp.per_request for u in uses if u.artifact.unet_lora or u.artifact.text_lora}
        if not in_use:
            return
        self._loras.rescan()
        for i, uses in enumerate(comp.per_request):
            for u in uses:
                if u.artifact.unet_lora or u.artifact.text_lora:
                    name = self._loras.ensure(u.key, u.artifact, in_use)
                    comp.adapters[i][name] = comp.adapters[i].get(name, 0.0) + float(u.weight)
        comp.text_lora = any(self._loras.in_text(k) for k in in_use)
        layers = self._loras.layers()
        first = comp.adapters[0]
        comp.mixed = any(a != first for a in comp.adapters)
        if not comp.mixed:
            names, weights = list(first), list(first.values())
            for layer in layers["unet"] + layers["text"]:
                # = peft's enable_adapters(True) + set_adapter(names, inference_mode=True), without their
                # requires_grad sweeps over every resident adapter's weights on every call (~75% of a compose):
                # resident adapters are injected frozen (inference_mode=True) and stay frozen.
                layer._disable_adapters = False
                layer._active_adapter = names
                for n, w in zip(names, weights, strict=True):
                    layer.set_scale(n, w)
            return
        # Mixed batch: peft's own path off, per-row deltas added by hooks.
        for part in ("unet", "text"):
            hook = comp.hook(part)
            for layer in layers[part]:
                hooks.append(layer.register_forward_hook(hook))

    def _network(self, use: ConceptUse) -> Any:
        """The concept's ``Hypernetwork`` on the pipeline's device, built once per artifact (LRU)."""
        hit = self._nets.get(use.key)
        if hit is not None and hit[0] is use.artifact:
            self._nets.move_to_end(use.key)
            return hit[1]
        art = use.artifact
        net = network_from(art.hypernetwork, art.hyper_structure, name=use.key).to(self.pipe.unet.device)
        self._nets[use.key] = (art, net)
        while len(self._nets) > self.lora_cache:
            self._nets.popitem(last=False)
        return net

    def _activate_hypernetworks(self, comp: Composition, hooks: list[Any]) -> None:
        nets: dict[str, Any] = {}
        for i, uses in enumerate(comp.per_request):
            for u in uses:
                if getattr(u.artifact, "hypernetwork", None):
                    nets.setdefault(u.key, self._network(u))
                    comp.hypernets[i][u.key] = comp.hypernets[i].get(u.key, 0.0) + float(u.weight)
        if not nets:
            return
        for module in attention_modules(self.pipe.unet):
            for which, proj in ((0, module.to_k), (1, module.to_v)):
                if proj is not None:
                    hooks.append(proj.register_forward_pre_hook(comp.hyper_hook(nets, which)))

    def _restore(self, written: list[int], hooks: list[Any]) -> None:
        for h in hooks:
            h.remove()
        self._slots.clear(written)
        if self._loras:
            layers = self._loras.layers()
            for layer in layers["unet"] + layers["text"]:
                layer._disable_adapters = True  # = enable_adapters(False) minus its requires_grad sweep (frozen)
            self._loras.trim()
