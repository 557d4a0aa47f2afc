"""Checks on a concept file a server admin uploads (``/kit import``, ``/style import``). Torch-free.

The checks are the one concept-file validator's (``training.concept_file``), the same the worker runs before it
composes a file: a file accepted here is a file the worker composes. The bot knows its base model by
``Settings.base_hidden_size`` (``training.base_layers.for_hidden_size``: SD 1.5's layer table, or the tiny test
model's). ``.safetensors`` is accepted, and ``.pt`` for A1111 hypernetworks only: the validator reads those with an
allow-list unpickler that never builds anything but tensors and plain values (``training.torch_pickle``); any other
pickle (``.ckpt``, ``.bin``...) runs arbitrary code when unpickled, so it is refused on sight and never read. A KitBooth face is refused as a
kit or style (the validator's consent rule): a face is only its owner's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kitbooth.errors import InvalidInput
from kitbooth.i18n import keyed
from training import safetensors_file
from training.base_layers import for_hidden_size
from training.concept_file import ConceptFile, read_concept

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
BASE_NAME = "Stable Diffusion 1.5"

ImportKind = Literal["embedding", "lora", "lora+embedding", "hypernetwork"]


@dataclass(frozen=True)
class ImportInfo:
    """What the validator found in the file."""

    kind: ImportKind
    tensors: int
    size_bytes: int
    width: int  # the text-encoder width the file was made for
    token_count: int = 0  # embedding vectors
    rank: int | None = None  # LoRA rank (the largest seen)
    targets: tuple[str, ...] = ()  # "unet", "text_encoder"
    embedding_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = ""
    hyper_summary: str = ""  # a hypernetwork's structure, as the validator describes it

    @classmethod
    def of(cls, cf: ConceptFile, tensors: int) -> ImportInfo:
        return cls(kind=cf.kind, tensors=tensors, size_bytes=cf.size_bytes, width=cf.hidden_size,  # type: ignore[arg-type]
                   token_count=cf.token_count, rank=cf.rank, targets=cf.targets,
                   embedding_names=cf.embedding_names, metadata=dict(cf.metadata), layout=cf.layout,
                   hyper_summary=cf.summary().rsplit(" (", 1)[0] if cf.hypernetwork else "")

    def summary(self) -> str:
        parts = [self.hyper_summary] if self.hyper_summary else []
        if self.kind in ("embedding", "lora+embedding"):
            parts.append(f"embedding, {self.token_count} vector{'s' * (self.token_count != 1)}")
        if self.kind in ("lora", "lora+embedding"):
            parts.append(f"LoRA rank {self.rank} on {' + '.join(self.targets)}")
        return f"{'; '.join(parts)} ({self.size_bytes / 1e6:.1f} MB)"


def _safe_name(filename: str) -> str:
    return safetensors_file.safe_name(filename)


def refuse_pickle_name(filename: str) -> None:
    if filename.lower().endswith(PICKLE_SUFFIXES):
        raise keyed(InvalidInput, "refusal.import_pickle", name=_safe_name(filename))


def refuse_by_name(filename: str) -> None:
    """The cheap check before a download: ``.safetensors``, or ``.pt`` (an A1111 hypernetwork; its content is
    checked by the validator like any file's)."""
    if filename.lower().endswith(".pt"):
        return
    refuse_pickle_name(filename)
    if not filename.lower().endswith(".safetensors"):
        raise keyed(InvalidInput, "refusal.import_not_safetensors", name=_safe_name(filename))


def parse_header(data: bytes, filename: str = "file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The safetensors container checks alone: (tensors as numpy arrays, metadata)."""
    return safetensors_file.read(data, filename)


def check_import(data: bytes, filename: str, *, hidden_size: int, max_bytes: int,
                 kind: Literal["kit", "style"] = "kit") -> ImportInfo:
    """Everything the bot checks before storing an uploaded concept file as a ``kind``; raises a
    ``UserFacingError``."""
    refuse_by_name(filename)
    cf = read_concept(data, for_hidden_size(hidden_size), filename=filename, max_bytes=max_bytes, kind=kind)
    return ImportInfo.of(cf, tensors=len(cf.hypernetwork) if cf.layout == "a1111-hypernetwork" else _tensor_count(data))


def _tensor_count(data: bytes) -> int:
    n = int.from_bytes(data[:8], "little")  # already validated by read_concept (a safetensors file here)
    return sum(1 for k in json.loads(data[8 : 8 + n]) if k != "__metadata__")


def describe(info: ImportInfo) -> dict[str, Any]:
    return {"kind": info.kind, "tensors": info.tensors, "tokens": info.token_count, "rank": info.rank,
            "targets": list(info.targets)}
