"""The TI slot table: a fixed pool of placeholder tokens whose embedding rows composition fills per call.

``<kb-slot-0>`` ... ``<kb-slot-N>`` are added to the resident tokenizer and the embedding table is resized **once**
(diffusers' ``load_textual_inversion`` resizes it on every load, and its unload never shrinks it back). Their
rows are zero between calls; a composition writes each concept's vectors into free rows and rewrites that
request's prompt from the concept's trigger tokens to its slot tokens, so two users' TI concepts share one batch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

SLOT_PREFIX = "<kb-slot-"


class SlotPool:
    """The slot tokens of one pipeline's tokenizer and text encoder (built once, at worker start)."""

    def __init__(self, tokenizer: Any, text_encoder: Any, size: int):
        self._text_encoder = text_encoder
        self.tokens = [f"{SLOT_PREFIX}{i}>" for i in range(size)]
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.tokens if t not in vocab]
        if missing:
            tokenizer.add_tokens(missing)
        self.ids: list[int] = tokenizer.convert_tokens_to_ids(self.tokens)
        emb = text_encoder.get_input_embeddings()
        if max(self.ids) >= emb.num_embeddings:
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            emb = text_encoder.get_input_embeddings()
        with torch.no_grad():
            emb.weight.index_fill_(0, torch.tensor(self.ids, device=emb.weight.device), 0.0)
        self.hidden_size: int = emb.embedding_dim

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def needed(per_request: Sequence[Sequence[Any]]) -> int:
        """Slots a batch needs: one per vector of each distinct TI concept (a concept used twice shares)."""
        seen: dict[str, int] = {}
        for uses in per_request:
            for u in uses:
                if u.artifact.embeddings is not None:
                    seen[u.key] = len(u.artifact.tokens)
        return sum(seen.values())

    def write(self, per_request: Sequence[Sequence[Any]], rewrites: list[list[tuple[re.Pattern[str], str]]],
              written: list[int]) -> None:
        """Write every TI concept's vectors into free rows and each request's trigger rewrites.

        ``written`` grows row by row, so a failure half-way still lets :meth:`clear` zero what was written.
        """
        emb = self._text_encoder.get_input_embeddings()
        by_key: dict[str, list[int]] = {}
        next_slot = 0
        for i, uses in enumerate(per_request):
            for u in uses:
                art = u.artifact
                if art.embeddings is None or not art.tokens:
                    continue
                if u.key not in by_key:
                    n = len(art.tokens)
                    slots = list(range(next_slot, next_slot + n))
                    next_slot += n
                    idx = torch.tensor([self.ids[s] for s in slots], device=emb.weight.device)
                    with torch.no_grad():
                        emb.weight.index_copy_(0, idx, art.embeddings.detach().to(emb.weight.device, emb.weight.dtype))
                    written.extend(idx.tolist())
                    by_key[u.key] = slots
                rewrites[i].extend(trigger_rewrites(list(art.tokens), [self.tokens[s] for s in by_key[u.key]]))

    def clear(self, written: list[int]) -> None:
        """Zero the rows a composition wrote: the slot tokens mean nothing again."""
        if written:
            emb = self._text_encoder.get_input_embeddings()
            with torch.no_grad():
                emb.weight.index_fill_(0, torch.tensor(written, device=emb.weight.device), 0.0)


def trigger_rewrites(tokens: list[str], slots: list[str]) -> list[tuple[re.Pattern[str], str]]:
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
