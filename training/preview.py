"""Cheap previews of SD 1.5 latents: a fixed linear map from the 4 latent channels to RGB (no VAE decode).

The factors are the widely used approximation for SD 1.x latents (as in A1111's "Approx NN/cheap" preview):
good enough to show composition and colours while a generation runs, at ~0 cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

# rows: latent channels 0..3; columns: R, G, B contributions (output roughly in [-1, 1]).
SD15_LATENT_RGB = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)


def latents_to_rgb(latents) -> list[Image.Image]:
    """(B, 4, h, w) latents (torch tensor or array, scaled as the UNet sees them) -> B small RGB images."""
    arr = latents.detach().float().cpu().numpy() if hasattr(latents, "detach") else np.asarray(latents, np.float32)
    if arr.ndim != 4 or arr.shape[1] != 4:
        raise ValueError(f"expected (B, 4, h, w) latents, got {arr.shape}")
    rgb = np.einsum("bchw,cr->bhwr", arr, SD15_LATENT_RGB)
    rgb = np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)
    return [Image.fromarray(x, "RGB") for x in rgb]


def grid(images: Sequence[Image.Image], *, cols: int | None = None, cell: int | None = None) -> Image.Image:
    """Images side by side (``cols`` per row), each resized to ``cell`` pixels wide when given."""
    if not images:
        raise ValueError("no images")
    if cell:
        images = [im.resize((cell, max(1, round(im.height * cell / im.width))), Image.BILINEAR) for im in images]
    cols = cols or len(images)
    rows = (len(images) + cols - 1) // cols
    w, h = images[0].size
    out = Image.new("RGB", (w * cols, h * rows))
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


def preview(latents, *, cols: int | None = None, cell: int = 128) -> Image.Image:
    """One grid image of all latents in the batch."""
    return grid(latents_to_rgb(latents), cols=cols, cell=cell)
