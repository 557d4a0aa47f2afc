"""Training data: square crops, mirror images, latent-size loss weights and caption token ids.

The trainer never adds its placeholder tokens to the (resident, shared) tokenizer. A caption is tokenised around
its ``{}`` slot; each placeholder position gets a stand-in id (the init word's) and a *slot number*; the TI module
overwrites the token-embedding output at those positions with the trainable vectors. The resulting text embedding
is exactly what a tokenizer with added tokens and a resized embedding table would give, without touching either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

PLACEHOLDER = "{}"


def square_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop to a square and resize to ``resolution`` (RGB). Already-square inputs are only resized."""
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
    return image


def mask_resize(mask: Image.Image, resolution: int) -> Image.Image:
    mask = mask.convert("L")
    if mask.size != (resolution, resolution):
        mask = ImageOps.fit(mask, (resolution, resolution), Image.Resampling.BILINEAR)
    return mask


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) float32 in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])  # N H W 3
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()


def loss_weights(
    masks: Sequence[Image.Image | None], latent_size: int, outside: float, *, enabled: bool
) -> torch.Tensor:
    """(N, 1, h, w) per-pixel loss weights at latent size: 1 inside the face mask, ``outside`` elsewhere."""
    out = torch.ones(len(masks), 1, latent_size, latent_size)
    if not enabled:
        return out
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        m = torch.nn.functional.adaptive_avg_pool2d(m, latent_size)[0]
        out[i] = outside + (1.0 - outside) * m
    return out


def expand_captions(captions: Sequence[str | None] | None, count: int, templates: Sequence[str]) -> list[list[str]]:
    """Per image, the caption variants it is trained with; each contains exactly one ``{}`` (the trigger).

    A given caption with ``{}`` or ``{trigger}`` is used as is; one without is appended to each template
    ("a photo of {} person, smiling"); a missing or empty one gives the kind's templates.
    """
    out: list[list[str]] = []
    for i in range(count):
        cap = (captions[i] if captions is not None and i < len(captions) else None) or ""
        cap = cap.strip().replace("{trigger}", PLACEHOLDER)
        if cap.count(PLACEHOLDER) == 1:
            out.append([cap])
        elif cap:
            out.append([f"{t}, {cap.replace(PLACEHOLDER, '')}" for t in templates])
        else:
            out.append(list(templates))
    return out


@dataclass(frozen=True)
class TokenizedCaption:
    ids: list[int]  # model_max_length ids (bos ... eos pad)
    slots: list[int]  # same length; k >= 0 where placeholder vector k goes, else -1


def tokenize_caption(tokenizer, caption: str, *, trigger_words: Sequence[str] | None,
                     num_slots: int, stand_in_id: int) -> TokenizedCaption:
    """Tokenise ``caption`` (one ``{}``): with ``num_slots`` > 0 the ``{}`` becomes that many placeholder
    positions; otherwise it is replaced by ``trigger_words`` as plain text."""
    max_len = tokenizer.model_max_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    before, _, after = caption.partition(PLACEHOLDER)

    def enc(text: str) -> list[int]:
        text = text.strip()
        return tokenizer(text, add_special_tokens=False).input_ids if text else []

    if num_slots > 0:
        mid, mid_slots = [stand_in_id] * num_slots, list(range(num_slots))
    else:
        mid = enc(" ".join(trigger_words or []))
        mid_slots = [-1] * len(mid)
    pre, post = enc(before), enc(after)
    ids = [bos] + pre + mid + post
    slots = [-1] * (1 + len(pre)) + mid_slots + [-1] * len(post)
    ids, slots = ids[: max_len - 1] + [eos], slots[: max_len - 1] + [-1]
    ids += [pad] * (max_len - len(ids))
    slots += [-1] * (max_len - len(slots))
    return TokenizedCaption(ids, slots)


def init_word_ids(tokenizer, word: str) -> list[int]:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"init word {word!r} gives no tokens")
    return ids
