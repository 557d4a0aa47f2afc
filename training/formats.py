"""Import of concepts in the community's formats (diffusers, A1111, kohya) and of our own; export: ``training.exports``.

Every file goes through the one validator first (``training.concept_file.read_concept``, torch-free), which
decides the layout and checks every tensor against the base model; this module only turns its arrays into a
``ConceptArtifact``. ``load_concept`` is the worker's path (safetensors only, like the bot's ``/kit import``);
``import_file`` adds A1111 ``.pt`` embeddings for the library and CLI, read with ``torch.load(weights_only=True)``
(plain tensors and containers only, never an arbitrary pickle) and then checked by the same validator.
An A1111 hypernetwork ``.pt`` is the validator's own business (read torch-free by ``training.torch_pickle``, as
the bot and the worker read it); its artifact holds the MLPs as ``hypernetwork`` tensors with their structure.

Imported LoRAs are normalised to one rank and alpha: layers of a smaller rank are zero-padded and a per-layer
alpha/rank is folded into B (both exact), so ``ConceptArtifact.rank``/``alpha`` describe every layer.
"""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from kitbooth import __version__, limits
from kitbooth.errors import IncompatibleArtifact
from training.artifact import ConceptArtifact, artifact_from_file, check_compatible, validate
from training.base_layers import SD15, BaseModel, from_pipeline
from training.concept_file import ConceptFile, LoraPair, from_tensors, read_concept
from training.concept_layouts import kohya_name, module_path_from_kohya
from training.exports import (
    DIFFUSERS_LORA_NAME,
    DIFFUSERS_TI_NAME,
    FORMATS,
    Format,
    base_name,
    export,
    kohya_lora_tensors,
)
from training.hypernetwork_layout import is_a1111_dict
from training.safetensors_file import looks_like_pickle
from training.torch_pickle import load as load_torch_zip

__all__ = [
    "DIFFUSERS_LORA_NAME", "DIFFUSERS_TI_NAME", "FORMATS", "Format", "artifact_of", "base_name", "export",
    "import_file", "kohya_lora_tensors", "kohya_name", "load_concept", "module_path_from_kohya",
]

SD15_HIDDEN = SD15.hidden_size
MAX_IMPORT_BYTES = limits.CONCEPT_FILE_BYTES
_PT_META = ("name", "kitbooth_kind", "kitbooth_trigger")


def load_concept(data: bytes, *, base: BaseModel | None, kind: str, filename: str = "concept.safetensors",
                 base_model: str = "", trigger: str | None = None,
                 max_bytes: int = limits.CONCEPT_FILE_BYTES) -> ConceptArtifact:
    """A concept file's artifact, validated against ``base`` (the worker: its resident pipeline's table) and
    as ``kind`` (a face file is refused as a kit or style)."""
    cf = read_concept(data, base, filename=filename, trigger=trigger, max_bytes=max_bytes, kind=kind)
    return artifact_of(cf, kind=kind, base_model=base_model)


def import_file(path_or_bytes: str | Path | bytes, filename: str | None = None, *, kind: str | None,
                base_model: str = "", pipe=None, trigger: str | None = None,
                base: BaseModel | None = None, max_bytes: int = MAX_IMPORT_BYTES) -> ConceptArtifact:
    """Read a concept file in any supported format (``.pt`` embeddings too). The base model is ``base``, else
    ``pipe``'s own table, else none for KitBooth's own files (checked without a layer table) and SD 1.5 for
    others. ``kind``: what the file is to be used as (a face is refused as a kit or style); None takes the file
    as it is (a community file then reads as a kit). Raises ``IncompatibleArtifact`` (an ``InvalidInput``)
    with one sentence."""
    base = base if base is not None else from_pipeline(pipe) if pipe is not None else None
    if isinstance(path_or_bytes, bytes | bytearray):
        data, filename = bytes(path_or_bytes), filename or "concept"
    else:
        p = Path(path_or_bytes)
        if p.stat().st_size > max_bytes:
            raise IncompatibleArtifact(f"That file is over {max_bytes / 2**20:.0f} MB, too large for a concept.")
        data, filename = p.read_bytes(), filename or p.name
    if looks_like_pickle(data) and not _is_hypernetwork_pt(data):
        cf = from_tensors(*_torch_file(data), base, filename=filename, trigger=trigger, size_bytes=len(data),
                          foreign_base=SD15, kind=kind)
        cf = dataclasses.replace(cf, source="a1111")
    else:
        cf = read_concept(data, base, filename=filename, trigger=trigger, foreign_base=SD15, kind=kind,
                          max_bytes=max_bytes)
    art = artifact_of(cf, kind=kind or "kit", base_model=base_model)
    if pipe is not None:
        check_compatible(art, pipe)
    return art


def _is_hypernetwork_pt(data: bytes) -> bool:
    """An A1111 hypernetwork ``.pt`` goes to the validator itself (read torch-free, as the bot reads it)."""
    try:
        return is_a1111_dict(load_torch_zip(data))
    except IncompatibleArtifact:
        return False


def _torch_file(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """An A1111 ``.pt`` embedding as (tensors, metadata) for the validator."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - UnpicklingError for objects we refuse to build, or a corrupt file
        raise IncompatibleArtifact(
            "This .pt file holds more than plain tensors and is not loaded (unsafe pickle) — use a "
            ".safetensors version of it.") from None
    if not isinstance(obj, dict):
        raise IncompatibleArtifact("This .pt file is not a dict of tensors — use a .safetensors version of it.")
    params = obj.get("string_to_param")
    if isinstance(params, dict):
        tensor = params.get("*", next(iter(params.values()), None))
        name = obj.get("name")
        tensors = {f"<{name}>" if isinstance(name, str) and name else "string_to_param.*": tensor}
    else:
        tensors = dict(obj)
    if not tensors or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise IncompatibleArtifact("This .pt file holds something other than named tensors — use a .safetensors "
                                   "version of it.")
    # Its string fields (A1111's ``name``, our ``kitbooth_kind``) are metadata the validator reads (consent).
    meta = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, str) and k in _PT_META}
    return {k: v.detach().cpu().float().numpy() for k, v in tensors.items()}, meta


def artifact_of(cf: ConceptFile, *, kind: str, base_model: str = "") -> ConceptArtifact:
    """Build the artifact of a validated file: our own as written, others as ``method="imported"``."""
    if cf.layout == "kitbooth":
        return artifact_from_file(cf)
    unet, text, rank, alpha = _normalise_lora(cf.lora)
    art = ConceptArtifact(
        kind=kind, method="imported", base_model=base_model, hidden_size=cf.hidden_size,  # type: ignore[arg-type]
        tokens=list(cf.tokens), embeddings=_tensor(cf.embeddings) if cf.embeddings is not None else None,
        unet_lora=unet, text_lora=text, rank=rank, alpha=alpha, steps=0,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), version=__version__,
        extra={"source_format": cf.source} if cf.hyper_structure is None else {
            "source_format": cf.source, "name": str(cf.metadata.get("name") or "")},
        hypernetwork={k: _tensor(v) for k, v in cf.hypernetwork.items()}, hyper_structure=cf.hyper_structure,
    )
    validate(art)
    return art


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def _normalise_lora(pairs: tuple[LoraPair, ...]):
    """-> (unet peft dict, text peft dict, rank, alpha) with one rank and alpha for all layers (exact)."""
    if not pairs:
        return {}, {}, None, None
    ranks = {p.rank for p in pairs}
    alphas = {p.alpha if p.alpha is not None else float(p.rank) for p in pairs}
    uniform = len(ranks) == 1 and len(alphas) == 1
    rank = max(ranks)
    alpha = next(iter(alphas)) if uniform else float(rank)
    out: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "text": {}}
    for p in pairs:
        a, b = _tensor(p.down), _tensor(p.up)
        if not uniform:
            b = b * ((p.alpha if p.alpha is not None else p.rank) / p.rank)  # the artifact's scale is then 1
            if p.rank < rank:  # zero-pad to the common rank: B @ A is unchanged
                a = torch.cat([a, a.new_zeros(rank - p.rank, *a.shape[1:])])
                b = torch.cat([b, b.new_zeros(b.shape[0], rank - p.rank, *b.shape[2:])], dim=1)
        out[p.part][f"{p.path}.lora_A.weight"] = a.contiguous()
        out[p.part][f"{p.path}.lora_B.weight"] = b.contiguous()
    return out["unet"], out["text"], rank, float(alpha)
