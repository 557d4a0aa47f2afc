"""The live state of one composition: each request's prompt rewrites, adapters and weights, and the per-row
LoRA hook that lets requests with different adapters share one batch.

When every request uses the same adapters with the same weights, peft's own path runs them (see
``training.compose``). When requests differ (two users' LoRAs in one batch) peft's adapters are switched off and
:meth:`Composition.hook` adds ``weight * B(A(x)) * alpha/r`` only to the rows of the requests that use each
adapter. Rows follow the pipeline's batch order, and classifier-free guidance's doubled batch (``[uncond, cond]``)
is recognised by its size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from training.compose import ConceptUse


class Composition:
    """What :meth:`training.compose.Composer.compose` yields: rewrite prompts, then set the rows of each batch."""

    def __init__(self, per_request: list[list[ConceptUse]]):
        self.per_request = per_request
        # request index -> [(compiled pattern, replacement)]
        self.rewrites: list[list[tuple[re.Pattern[str], str]]] = [[] for _ in per_request]
        # request index -> {adapter name: weight}
        self.adapters: list[dict[str, float]] = [{} for _ in per_request]
        # request index -> {hypernetwork concept key: strength} (applied by hyper_hook, in this order)
        self.hypernets: list[dict[str, float]] = [{} for _ in per_request]
        self.mixed = False
        self.text_lora = False
        self._text_rows: list[int] = list(range(len(per_request)))
        self._unet_rows: list[int] = list(range(len(per_request)))
        self._sel_cache: dict[tuple[str, str, int], tuple[torch.Tensor, torch.Tensor] | None] = {}

    def rewrite(self, i: int, text: str) -> str:
        """Request ``i``'s prompt with its concepts' trigger tokens replaced by their slot tokens."""
        for pattern, repl in self.rewrites[i]:
            text = pattern.sub(repl, text)
        return text

    def set_rows(self, *, text: Sequence[int] | None = None, unet: Sequence[int] | None = None) -> None:
        """Which request each row of the next text-encoder / UNet batch belongs to (CFG doubling is automatic).
        Only mixed batches read it."""
        if text is not None:
            self._text_rows = list(text)
        if unet is not None:
            self._unet_rows = list(unet)
        self._sel_cache.clear()

    def _row_weights(self, adapter: str, rows: list[int], n: int,
                     table: list[dict[str, float]] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        table = self.adapters if table is None else table
        if n % len(rows):
            raise RuntimeError(f"batch of {n} rows does not match the {len(rows)} rows set on the composition")
        rows = rows * (n // len(rows))  # CFG: [uncond rows..., cond rows...]
        idx = [j for j, r in enumerate(rows) if adapter in table[r]]
        if not idx:
            return None
        w = [table[rows[j]][adapter] for j in idx]
        return torch.tensor(idx), torch.tensor(w)

    def hyper_hook(self, nets: dict[str, Any], which: int):
        """A forward pre-hook for a UNet attention's ``to_k`` (``which=0``) or ``to_v`` (1): each hypernetwork
        (``training.hypernetwork.Hypernetwork``, by concept key) transforms the context rows of the requests that
        use it, at their strength — A1111's ``context + mlp(context) * strength``; other rows are untouched."""
        cache = self._sel_cache

        def hook(_module: Any, args: tuple) -> tuple | None:
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            x = args[0]
            n = x.shape[0]
            for key, net in nets.items():
                cache_key = ("_hyper", key, n)
                if cache_key not in cache:
                    cache[cache_key] = self._row_weights(key, self._unet_rows, n, self.hypernets)
                sel = cache[cache_key]
                pair = net.pair(int(x.shape[-1])) if sel is not None else None
                if pair is None:
                    continue
                idx, w = sel
                if len(idx) == n and bool((w == w[0]).all()):  # every row, one strength: A1111's own call
                    x = net.transform(x, which, float(w[0]))
                    continue
                mlp = pair[which].linear
                dtype = next(mlp.parameters()).dtype
                xs = x.index_select(0, idx.to(x.device)).to(dtype)
                ys = xs + mlp(xs) * w.to(x.device, dtype).view(-1, *([1] * (x.dim() - 1)))
                x = x.index_copy(0, idx.to(x.device), ys.to(x.dtype))
            return (x, *args[1:])

        return hook

    def hook(self, part: str):
        """A forward hook for every LoRA layer of ``part`` ("unet" or "text") of a mixed batch."""
        rows_attr = "_unet_rows" if part == "unet" else "_text_rows"
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
