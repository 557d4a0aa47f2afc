"""Textual inversion without touching the resident tokenizer or embedding table.

The trainable vectors live here, in fp32. While the trainer runs, a forward hook on the text encoder's token
embedding writes them into the placeholder positions of each caption (see ``training.data.tokenize_caption``).
Only those positions ever differ from the base model; the embedding table itself is never written, resized or
given a gradient, so "only the new rows change" holds by construction, and removing the hook restores the
text encoder exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from training.data import init_word_ids


class TokenVectors(nn.Module):
    """``num_vectors`` trainable token embeddings, initialised from the mean embedding of ``init_word``."""

    def __init__(self, text_encoder, tokenizer, num_vectors: int, init_word: str):
        super().__init__()
        table = text_encoder.get_input_embeddings().weight
        ids = init_word_ids(tokenizer, init_word)
        self.stand_in_id = ids[0]
        init = table.detach()[ids].float().mean(dim=0, keepdim=True).cpu()
        self.vectors = nn.Parameter(init.repeat(num_vectors, 1).clone())
        self._slots: torch.Tensor | None = None

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[0]

    def _hook(self, module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
        slots = self._slots
        if slots is None:
            return out
        mask = (slots >= 0).unsqueeze(-1)
        vec = self.vectors.to(device=out.device, dtype=out.dtype)[slots.clamp(min=0)]
        return torch.where(mask, vec, out)

    @contextlib.contextmanager
    def attached(self, text_encoder) -> Iterator[None]:
        """Install the hook on ``text_encoder``'s token embedding for the duration of the block."""
        handle = text_encoder.get_input_embeddings().register_forward_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()
            self._slots = None

    def encode(self, text_encoder, ids: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings (last hidden state) of ``ids`` with the vectors at ``slots`` (needs ``attached``)."""
        self._slots = slots
        try:
            return text_encoder(ids)[0]
        finally:
            self._slots = None
