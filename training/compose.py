"""Compose several concepts (face + kit + style) on a resident pipeline for one call, then restore it exactly.

Cheap per job, unlike diffusers' ``load_textual_inversion``/``load_lora_weights`` and their unloads:

* **TI slots.** A pool of placeholder tokens (``<kb-slot-0>`` ... ``<kb-slot-N>``) is added to the tokenizer and
  the embedding table is resized **once**, at construction; their rows are zero. Composing writes each concept's
  vectors into free slots (an ``index_copy_``) and :meth:`Composition.rewrite` swaps the concept's trigger
  tokens for its slot tokens in that request's prompt. Each request (prompt) of a batch gets its own slots,
  so two users' TI concepts work in one batch. On exit the rows are zeroed again.
* **Resident LoRA adapters.** A concept's UNet (and text-encoder) LoRA is injected once with peft under an
  adapter name derived from the concept key and kept in a bounded LRU (``lora_cache``); the least recently
  used one is deleted when the cache is full, so memory stays bounded.
* **Per-sample adapters.** When every request of the batch uses the same adapters with the same weights the
  composer activates them with peft's ``set_adapter`` + ``set_scale`` (the ``set_adapters(names, weights)``
  path). When requests differ (two users' LoRAs in one batch) peft's own adapters are switched off and a
  forward hook on each LoRA layer adds ``weight * B(A(x)) * alpha/r`` only to the rows of the requests that
  use that adapter. Rows follow the pipeline's batch order, and classifier-free guidance's doubled batch
  (``[uncond, cond]``) is recognised by its size. So any mix of concepts can share one pipeline call and
  :meth:`Composer.can_batch` only has to check the slot pool.

On exit (always, in ``finally``) the slot rows are zeroed, every LoRA layer is disabled and the hooks are
removed: the pipeline's output is bit-identical to the base pipeline's.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from kitbooth.errors import IncompatibleArtifact

log = logging.getLogger(__name__)

SLOT_PREFIX = "<kb-slot-"
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass(frozen=True)
class ConceptUse:
    """One concept used by one request: ``key`` identifies the artifact (e.g. its store key)."""

    key: str
    artifact: Any  # training.artifact.ConceptArtifact
    weight: float = 1.0


@dataclass
class _Resident:
    adapter: str
    fingerprint: str
    in_unet: bool
    in_text: bool


def _fingerprint(art: Any) -> str:
    parts = (
        getattr(art, "method", ""), getattr(art, "created", ""), getattr(art, "steps", ""),
        getattr(art, "rank", ""), getattr(art, "alpha", ""), getattr(art, "version", ""),
        len(art.unet_lora or {}), len(art.text_lora or {}),
        tuple(sorted((art.unet_lora or {}).keys()))[:4],
    )
    h = hashlib.sha1(repr(parts).encode())
    # A few tensor values, so a retrained file under the same key is told apart.
    for sd in (art.unet_lora or {}, art.text_lora or {}):
        for k in sorted(sd)[:2]:
            h.update(sd[k].detach().float().flatten()[:16].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _adapter_name(key: str) -> str:
    # peft adapter names become ModuleDict keys: no dots allowed.
    return "kb_" + hashlib.sha1(key.encode()).hexdigest()[:16]


def _lora_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _lora_targets(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (lora_A weight, lora_B weight); refuses keys that are not plain LoRA."""
    out: dict[str, list[torch.Tensor | None]] = {}
    for k, v in sd.items():
        for i, suffix in enumerate(_LORA_SUFFIXES):
            if k.endswith(suffix):
                out.setdefault(k[: -len(suffix)], [None, None])[i] = v
                break
        else:
            raise IncompatibleArtifact(f"This concept file has an unsupported LoRA tensor ({k}).")
    bad = [m for m, (a, b) in out.items() if a is None or b is None]
    if bad:
        raise IncompatibleArtifact(f"This concept file's LoRA is incomplete (layer {bad[0]}).")
    return {m: (a, b) for m, (a, b) in out.items()}  # type: ignore[misc]


class Composition:
    """The live state of one :meth:`Composer.compose` block."""

    def __init__(self, composer: Composer, per_request: list[list[ConceptUse]]):
        self._composer = composer
        self.per_request = per_request
        # request index -> [(compiled pattern, replacement)]
        self._rewrites: list[list[tuple[re.Pattern[str], str]]] = [[] for _ in per_request]
        # request index -> {adapter name: weight}
        self.adapters: list[dict[str, float]] = [{} for _ in per_request]
        self.mixed = False
        self._text_rows: list[int] = list(range(len(per_request)))
        self._unet_rows: list[int] = list(range(len(per_request)))
        self.text_lora = False
        self._sel_cache: dict[tuple[str, str, int], tuple[torch.Tensor, torch.Tensor] | None] = {}

    # --- prompts -----------------------------------------------------------------------------------------
    def rewrite(self, i: int, text: str) -> str:
        """Request ``i``'s prompt with its concepts' trigger tokens replaced by their slot tokens."""
        for pattern, repl in self._rewrites[i]:
            text = pattern.sub(repl, text)
        return text

    # --- batch layout (only matters for mixed batches) ------------------------------------------------
    def set_rows(self, *, text: Sequence[int] | None = None, unet: Sequence[int] | None = None) -> None:
        """Which request each row of the next text-encoder / UNet batch belongs to (CFG doubling is automatic)."""
        if text is not None:
            self._text_rows = list(text)
        if unet is not None:
            self._unet_rows = list(unet)
        self._sel_cache.clear()

    def _row_weights(self, adapter: str, rows: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if n % len(rows):
            raise RuntimeError(f"batch of {n} rows does not match the {len(rows)} rows set on the composition")
        rows = rows * (n // len(rows))  # CFG: [uncond rows..., cond rows...]
        idx = [j for j, r in enumerate(rows) if adapter in self.adapters[r]]
        if not idx:
            return None
        w = [self.adapters[rows[j]][adapter] for j in idx]
        return torch.tensor(idx), torch.tensor(w)

    def _hook(self, rows_attr: str):
        cache = self._sel_cache

        def hook(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            n = x.shape[0]
            rows = getattr(self, rows_attr)
            for name in module.lora_A:
                key = (rows_attr, name, n)
                if key not in cache:
                    cache[key] = self._row_weights(name, rows, n)
                sel = cache[key]
                if sel is None:
                    continue
                idx, w = sel
                idx = idx.to(x.device)
                a, b = module.lora_A[name], module.lora_B[name]
                scale = module.lora_alpha[name] / (
                    module.r[name] ** 0.5 if module.use_rslora.get(name, False) else module.r[name]
                )
                xs = x.index_select(0, idx).to(a.weight.dtype)
                # The per-row factor stays fp32 (as peft's python-float scaling does): in a half pipeline a
                # half factor (0.7 -> 0.6992 in bf16) made a weighted adapter differ from the same request alone.
                factor = (w.to(x.device, torch.float32) * scale).view(-1, *([1] * (x.dim() - 1)))
                delta = b(a(xs)) * factor
                output = output.index_add(0, idx, delta.to(output.dtype))
            return output

        return hook


class Composer:
    """Applies concepts to one resident pipeline; see the module docstring."""

    def __init__(self, pipe: Any, *, slots: int = 32, lora_cache: int = 8):
        if slots < 1 or lora_cache < 1:
            raise ValueError("slots and lora_cache must be at least 1")
        self.pipe = pipe
        self.lora_cache = lora_cache
        self._active: Composition | None = None
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        tok, te = pipe.tokenizer, pipe.text_encoder
        self.slot_tokens = [f"{SLOT_PREFIX}{i}>" for i in range(slots)]
        vocab = tok.get_vocab()
        missing = [t for t in self.slot_tokens if t not in vocab]
        if missing:
            tok.add_tokens(missing)
        self.slot_ids = tok.convert_tokens_to_ids(self.slot_tokens)
        emb = te.get_input_embeddings()
        if max(self.slot_ids) >= emb.num_embeddings:
            te.resize_token_embeddings(len(tok), mean_resizing=False)
            emb = te.get_input_embeddings()
        self._slot_index = torch.tensor(self.slot_ids, device=emb.weight.device)
        with torch.no_grad():
            emb.weight.index_fill_(0, self._slot_index, 0.0)
        self.hidden_size = emb.embedding_dim
        self._modules = {
            "unet": dict(pipe.unet.named_modules()),
            "text": dict(te.named_modules()),
        }
        self._layers: dict[str, list[Any]] | None = None

    # --- capacity --------------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self.slot_tokens)

    def resident_adapters(self) -> list[str]:
        """Concept keys whose LoRA is resident, least recently used first."""
        return list(self._resident)

    def slots_needed(self, per_request: Sequence[Sequence[ConceptUse]]) -> int:
        seen: dict[str, int] = {}
        for uses in per_request:
            for u in uses:
                if u.artifact.embeddings is not None:
                    seen[u.key] = len(u.artifact.tokens)
        return sum(seen.values())

    def can_batch(self, per_request: Sequence[Sequence[ConceptUse]]) -> bool:
        """Whether these requests fit one pipeline call (any LoRA mix does; only the slot pool can run out)."""
        return self.slots_needed(per_request) <= self.slots

    # --- validation (no mutation) --------------------------------------------------------------------------
    def check(self, use: ConceptUse) -> None:
        """Raise :class:`IncompatibleArtifact` if the concept cannot be applied to this pipeline."""
        from training.artifact import check_compatible

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
        for part, sd in (("unet", art.unet_lora), ("text", art.text_lora)):
            for name, (a, b) in _lora_targets(sd or {}).items():
                mod = self._find(part, name)
                if mod is None:
                    raise IncompatibleArtifact(f"This concept's LoRA targets a layer the base model lacks ({name}).")
                w = mod.weight
                if a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
                    raise IncompatibleArtifact(
                        f"This concept's LoRA does not fit layer {name} (made for another base model)."
                    )

    def _find(self, part: str, name: str) -> Any:
        mods = self._modules[part]
        mod = mods.get(name)
        if mod is None and part == "text" and name.startswith("text_model."):
            mod = mods.get(name[len("text_model."):])
        if mod is not None and hasattr(mod, "get_base_layer"):
            mod = mod.get_base_layer()
        return mod if mod is not None and hasattr(mod, "weight") else None

    def _text_name(self, name: str) -> str:
        if name not in self._modules["text"] and name.startswith("text_model."):
            return name[len("text_model."):]
        return name

    # --- LoRA residency ----------------------------------------------------------------------------------------
    def _ensure_resident(self, use: ConceptUse, in_use: set[str]) -> str:
        art = use.artifact
        fp = _fingerprint(art)
        res = self._resident.get(use.key)
        if res is not None and not self._present(res):
            # Someone else removed it from the model (e.g. an unload): forget it and load it again.
            log.warning("resident adapter %s for %s vanished from the model: reloading", res.adapter, use.key)
            self._resident.pop(use.key)
            res = None
        if res is not None and res.fingerprint == fp:
            self._resident.move_to_end(use.key)
            return res.adapter
        if res is not None:  # same key, different file: replace it
            self._evict(use.key)
        while len(self._resident) >= self.lora_cache:
            victim = next((k for k in self._resident if k not in in_use), None)
            if victim is None:
                break  # everything resident is used by this batch: exceed the bound until exit
            self._evict(victim)
        name = _adapter_name(use.key)
        t0 = time.perf_counter()
        in_unet = self._inject(self.pipe.unet, art.unet_lora or {}, name, art, "unet")
        in_text = self._inject(self.pipe.text_encoder, art.text_lora or {}, name, art, "text")
        self._resident[use.key] = _Resident(name, fp, in_unet, in_text)
        self._layers = None
        log.info("lora adapter %s loaded for %s in %.1f ms", name, use.key, (time.perf_counter() - t0) * 1e3)
        return name

    def _present(self, res: _Resident) -> bool:
        layers = self._all_layers()
        return all(any(res.adapter in layer.lora_A for layer in layers[part])
                   for part, there in (("unet", res.in_unet), ("text", res.in_text)) if there)

    def _inject(self, model: torch.nn.Module, sd: dict[str, torch.Tensor], name: str, art: Any, part: str) -> bool:
        if not sd:
            return False
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

        targets = _lora_targets(sd)
        if part == "text":
            sd = {self._text_name(k[: -len(s)]) + s: v for k, v in sd.items() for s in _LORA_SUFFIXES if k.endswith(s)}
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
            self._delete(model, name)
            raise IncompatibleArtifact(f"This concept's LoRA could not be loaded ({missing[0]} missing).")
        for layer in _lora_layers(model):  # resident but inactive until a composition activates it
            layer.enable_adapters(False)
        return True

    @staticmethod
    def _delete(model: torch.nn.Module, name: str) -> None:
        with warnings.catch_warnings():  # "adapter was active which is now deleted": all are inactive here
            warnings.simplefilter("ignore", UserWarning)
            for layer in _lora_layers(model):
                if name in layer.lora_A:
                    layer.delete_adapter(name)
        cfg = getattr(model, "peft_config", None)
        if isinstance(cfg, dict):
            cfg.pop(name, None)

    def _evict(self, key: str) -> None:
        res = self._resident.pop(key)
        if res.in_unet:
            self._delete(self.pipe.unet, res.adapter)
        if res.in_text:
            self._delete(self.pipe.text_encoder, res.adapter)
        self._layers = None
        log.info("lora adapter %s evicted (%s)", res.adapter, key)

    def evict(self, key: str) -> bool:
        """Delete one concept's resident adapter (e.g. its file was deleted); False when it was not resident."""
        if key not in self._resident:
            return False
        self._evict(key)
        return True

    def evict_all(self) -> None:
        """Delete every resident adapter (e.g. before handing the pipeline to a trainer)."""
        for key in list(self._resident):
            self._evict(key)

    def _all_layers(self) -> dict[str, list[Any]]:
        if self._layers is None:
            self._layers = {"unet": _lora_layers(self.pipe.unet), "text": _lora_layers(self.pipe.text_encoder)}
        return self._layers

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

        comp = Composition(self, per_request)
        self._active = comp
        hooks: list[Any] = []
        written: list[int] = []
        try:
            self._write_slots(comp, written)
            self._activate_loras(comp, hooks)
            yield comp
        finally:
            self._restore(written, hooks)
            self._active = None

    def _write_slots(self, comp: Composition, written: list[int]) -> None:
        emb = self.pipe.text_encoder.get_input_embeddings()
        by_key: dict[str, list[int]] = {}
        next_slot = 0
        for i, uses in enumerate(comp.per_request):
            for u in uses:
                art = u.artifact
                if art.embeddings is None or not art.tokens:
                    continue
                if u.key not in by_key:
                    n = len(art.tokens)
                    slots = list(range(next_slot, next_slot + n))
                    next_slot += n
                    idx = torch.tensor([self.slot_ids[s] for s in slots], device=emb.weight.device)
                    with torch.no_grad():
                        emb.weight.index_copy_(0, idx, art.embeddings.detach().to(emb.weight.device, emb.weight.dtype))
                    written.extend(idx.tolist())
                    by_key[u.key] = slots
                slot_toks = [self.slot_tokens[s] for s in by_key[u.key]]
                comp._rewrites[i].extend(_trigger_rewrites(list(art.tokens), slot_toks))

    def _activate_loras(self, comp: Composition, hooks: list[Any]) -> None:
        in_use = {u.key for uses in comp.per_request for u in uses if u.artifact.unet_lora or u.artifact.text_lora}
        if not in_use:
            return
        self._layers = None  # re-scan (~1 ms at full size): other code may have added or removed LoRA layers
        for i, uses in enumerate(comp.per_request):
            for u in uses:
                if u.artifact.unet_lora or u.artifact.text_lora:
                    name = self._ensure_resident(u, in_use)
                    comp.adapters[i][name] = comp.adapters[i].get(name, 0.0) + float(u.weight)
        comp.text_lora = any(self._resident[k].in_text for k in in_use)
        layers = self._all_layers()
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
        for part, rows_attr in (("unet", "_unet_rows"), ("text", "_text_rows")):
            hook = comp._hook(rows_attr)
            for layer in layers[part]:
                hooks.append(layer.register_forward_hook(hook))

    def _restore(self, written: list[int], hooks: list[Any]) -> None:
        for h in hooks:
            h.remove()
        if written:
            emb = self.pipe.text_encoder.get_input_embeddings()
            with torch.no_grad():
                emb.weight.index_fill_(0, torch.tensor(written, device=emb.weight.device), 0.0)
        if self._resident:
            layers = self._all_layers()
            for layer in layers["unet"] + layers["text"]:
                layer._disable_adapters = True  # = enable_adapters(False) minus its requires_grad sweep (frozen)
            while len(self._resident) > self.lora_cache:
                self._evict(next(iter(self._resident)))


def _trigger_rewrites(tokens: list[str], slots: list[str]) -> list[tuple[re.Pattern[str], str]]:
    """Patterns that turn a concept's trigger into its slot tokens.

    The full trigger (``tok0 tok1 ...``) and the first token alone both become all slot tokens (so a
    multi-vector concept written by its name gets all its vectors, as diffusers does); any other token alone
    becomes its own slot.
    """

    def word(t: str) -> str:
        return r"(?<![\w-])" + re.escape(t) + r"(?![\w-])"

    full = " ".join(slots)
    out = [(re.compile(word(tokens[0]) + "".join(r"(?:\s+" + re.escape(t) + ")?" for t in tokens[1:])), full)]
    out.extend((re.compile(word(t)), s) for t, s in zip(tokens[1:], slots[1:], strict=True))
    return out
