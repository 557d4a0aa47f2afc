"""Caption text embeddings for training, with the TI vectors in their placeholder slots.

Tokenisation is cached per caption (captions repeat every few steps). While nothing on the text side trains
(pivotal's LoRA phase, plain UNet LoRA) the embeddings themselves are cached too: no text-encoder forward or
backward at all, which is what makes that phase cost what plain LoRA costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from training.data import TokenizedCaption, tokenize_caption
from training.textual_inversion import TokenVectors


class CaptionEmbeddings:
    def __init__(self, tokenizer: Any, text_encoder: Any, trigger_words: Sequence[str], ti: TokenVectors | None,
                 device: torch.device):
        self._tokenizer = tokenizer
        self._text_encoder = text_encoder
        self._trigger_words = list(trigger_words)
        self._ti = ti
        self._device = device
        self._tokens: dict[str, TokenizedCaption] = {}
        self._frozen: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str], *, text_frozen: bool) -> torch.Tensor:
        if not text_frozen:
            return self._encode(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self._frozen]
        if missing:
            with torch.no_grad():
                for cap, emb in zip(missing, self._encode(missing), strict=True):
                    self._frozen[cap] = emb
        return torch.stack([self._frozen[c] for c in captions])

    def clear(self) -> None:
        """Drop the cached embeddings (they are stale once the TI vectors change, e.g. on a resume)."""
        self._frozen.clear()

    def _tokenized(self, caption: str) -> TokenizedCaption:
        tok = self._tokens.get(caption)
        if tok is None:
            tok = tokenize_caption(
                self._tokenizer, caption, trigger_words=self._trigger_words,
                num_slots=self._ti.num_vectors if self._ti is not None else 0,
                stand_in_id=self._ti.stand_in_id if self._ti is not None else 0,
            )
            self._tokens[caption] = tok
        return tok

    def _encode(self, captions: list[str]) -> torch.Tensor:
        toks = [self._tokenized(c) for c in captions]
        ids = torch.tensor([t.ids for t in toks], device=self._device)
        if self._ti is None:
            return self._text_encoder(ids)[0]
        slots = torch.tensor([t.slots for t in toks], device=self._device)
        return self._ti.encode(self._text_encoder, ids, slots)
