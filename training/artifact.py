"""The concept artifact: one ``.safetensors`` file per trained (or imported) face, kit or style.

File layout (all tensors fp16):
    ``embeddings``               (len(tokens), hidden_size) TI vectors, when the concept has them
    ``unet.<peft key>``          UNet LoRA, keys as ``peft.get_peft_model_state_dict`` gives them
    ``text_encoder.<peft key>``  text-encoder LoRA (rare)
    ``hypernetwork.<size>.<0|1>.<key>``  a hypernetwork's K/V MLPs (``training.hypernetwork``), with its A1111
                                 structure fields as JSON in ``__metadata__["hypernetwork"]``
``__metadata__`` (all strings): ``format`` = "kitbooth.concept", ``format_version``, ``kind``, ``method``,
``base_model``, ``hidden_size``, ``tokens`` (JSON list), ``rank``, ``alpha`` ("" when no LoRA), ``steps``,
``created``, ``version`` (KitBooth's), ``extra`` (JSON object of strings).

``load_artifact`` returns fp32 tensors (exact copies of the fp16 values), so save → load → save gives the same
tensors and metadata (safetensors' header order may differ between writes). It reads the file through the one
concept-file validator (``training.concept_file``: torch-free, never a pickle), which refuses anything malformed
with one sentence.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from kitbooth import limits
from kitbooth.errors import IncompatibleArtifact
from training.base_layers import BaseModel
from training.concept_file import (
    KINDS,
    METHODS,
    NOT_OWN,
    OWN_FORMAT,
    OWN_FORMAT_VERSION,
    ConceptFile,
    read_concept,
)

FORMAT = OWN_FORMAT
FORMAT_VERSION = OWN_FORMAT_VERSION
MAX_TOKENS = limits.TI_VECTORS_MAX
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_A|lora_B)\.weight$")


@dataclass
class ConceptArtifact:
    kind: Literal["face", "kit", "style"]
    method: Literal["pivotal", "lora", "ti", "imported", "dreambooth", "hypernetwork"]
    base_model: str
    hidden_size: int
    tokens: list[str]
    embeddings: torch.Tensor | None
    unet_lora: dict[str, torch.Tensor]
    text_lora: dict[str, torch.Tensor]
    rank: int | None
    alpha: float | None
    steps: int
    created: str
    version: str
    extra: dict[str, str] = field(default_factory=dict)
    hypernetwork: dict[str, torch.Tensor] = field(default_factory=dict)  # "<size>.<0|1>.<key>" (method hypernetwork)
    hyper_structure: dict | None = None  # A1111's structure fields (training.hypernetwork.structure_of)

    @property
    def trigger(self) -> str:
        """What a prompt contains to use the concept."""
        return " ".join(self.tokens)

    @property
    def has_lora(self) -> bool:
        return bool(self.unet_lora or self.text_lora)

    @property
    def num_parameters(self) -> int:
        n = self.embeddings.numel() if self.embeddings is not None else 0
        return n + sum(t.numel() for d in (self.unet_lora, self.text_lora, self.hypernetwork) for t in d.values())

    @property
    def lora_scale(self) -> float:
        """alpha / rank: the factor peft applies to B @ A."""
        if not self.rank:
            return 1.0
        return float(self.alpha if self.alpha is not None else self.rank) / self.rank


def artifact_tensors(art: ConceptArtifact) -> dict[str, torch.Tensor]:
    """The tensors as stored (fp16, contiguous, CPU) under their file keys."""
    out: dict[str, torch.Tensor] = {}
    if art.embeddings is not None:
        out["embeddings"] = art.embeddings
    out.update({f"unet.{k}": v for k, v in art.unet_lora.items()})
    out.update({f"text_encoder.{k}": v for k, v in art.text_lora.items()})
    out.update({f"hypernetwork.{k}": v for k, v in art.hypernetwork.items()})
    return {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in out.items()}


def artifact_metadata(art: ConceptArtifact) -> dict[str, str]:
    hyper = {} if art.hyper_structure is None else {"hypernetwork": json.dumps(art.hyper_structure, sort_keys=True)}
    return {**hyper,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": art.kind,
        "method": art.method,
        "base_model": art.base_model,
        "hidden_size": str(int(art.hidden_size)),
        "tokens": json.dumps(list(art.tokens), ensure_ascii=False),
        "rank": "" if art.rank is None else str(int(art.rank)),
        "alpha": "" if art.alpha is None else _fmt_float(art.alpha),
        "steps": str(int(art.steps)),
        "created": art.created,
        "version": art.version,
        "extra": json.dumps(art.extra, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
    }


def _fmt_float(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def save_artifact(art: ConceptArtifact, path: str | Path | None = None) -> bytes:
    """Serialise ``art`` (validated first); write it atomically to ``path`` when given. Returns the bytes."""
    from safetensors.torch import save

    validate(art)
    tensors = artifact_tensors(art)
    # fp16 overflows above 65504: a value that was finite in fp32 must not be saved as inf.
    overflow = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if overflow:
        raise IncompatibleArtifact(f"values too large for fp16 in {overflow[0]} — the concept cannot be saved")
    data = save(tensors, metadata=artifact_metadata(art))
    if path is not None:
        write_atomic(Path(path), data)
    return data


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Temp file + ``os.replace``; ``mode`` (e.g. 0o644 for exports others read) instead of mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_artifact(src: str | Path | bytes, base: BaseModel | None = None) -> ConceptArtifact:
    """Read a KitBooth concept file (path or bytes) through the one validator (``training.concept_file``);
    ``base``: also check it fits that base model. Raises ``InvalidInput`` / ``IncompatibleArtifact``."""
    if isinstance(src, bytes | bytearray):
        data, name = bytes(src), "concept.safetensors"
    else:
        try:
            data, name = Path(src).read_bytes(), Path(src).name
        except OSError as exc:
            raise IncompatibleArtifact(f"Cannot read the concept file ({exc.strerror or 'unreadable'}).") from None
    cf = read_concept(data, base, filename=name, max_bytes=limits.DELTA_FILE_BYTES)  # our own: a delta may be big
    if cf.layout != "kitbooth":
        raise IncompatibleArtifact(NOT_OWN)
    return artifact_from_file(cf)


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def artifact_from_file(cf: ConceptFile) -> ConceptArtifact:
    """The artifact of a validated KitBooth concept file (fp32 tensors)."""
    own = cf.own
    lora: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "text": {}}
    for pair in cf.lora:
        lora[pair.part][f"{pair.path}.lora_A.weight"] = _tensor(pair.down)
        lora[pair.part][f"{pair.path}.lora_B.weight"] = _tensor(pair.up)
    art = ConceptArtifact(
        kind=own["kind"], method=own["method"], base_model=str(own["base_model"]),  # type: ignore[arg-type]
        hidden_size=cf.hidden_size, tokens=list(cf.tokens),
        embeddings=_tensor(cf.embeddings) if cf.embeddings is not None else None,
        unet_lora=lora["unet"], text_lora=lora["text"], rank=own["rank"], alpha=own["alpha"],  # type: ignore[arg-type]
        steps=int(own["steps"]), created=str(own["created"]), version=str(own["version"]),  # type: ignore[call-overload]
        extra=dict(own["extra"]),  # type: ignore[call-overload]
        hypernetwork={k: _tensor(v) for k, v in cf.hypernetwork.items()}, hyper_structure=cf.hyper_structure,
    )
    validate(art)
    return art


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (header only)."""
    if len(data) < 8:
        raise ValueError("too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > 100_000_000:
        raise ValueError("bad header length")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return {str(k): str(v) for k, v in meta.items()}


def validate(art: ConceptArtifact) -> None:
    """Internal consistency: kinds, tokens, shapes, LoRA pairs and ranks. Raises ``IncompatibleArtifact``."""
    bad = IncompatibleArtifact
    if art.kind not in KINDS:
        raise bad(f"unknown concept kind {art.kind!r}")
    if art.method not in METHODS:
        raise bad(f"unknown training method {art.method!r}")
    if not isinstance(art.hidden_size, int) or art.hidden_size <= 0:
        raise bad("concept has no valid hidden size")
    if (not isinstance(art.tokens, list) or not art.tokens or len(art.tokens) > MAX_TOKENS
            or not all(isinstance(t, str) and t.strip() and " " not in t for t in art.tokens)):
        raise bad("concept has no valid trigger tokens")
    if len(set(art.tokens)) != len(art.tokens):
        raise bad("concept has duplicate trigger tokens")
    if art.embeddings is not None:
        shape = tuple(art.embeddings.shape)
        if shape != (len(art.tokens), art.hidden_size):
            raise bad(f"embeddings have shape {shape}, expected ({len(art.tokens)}, {art.hidden_size})")
        if not torch.isfinite(art.embeddings).all():
            raise bad("embeddings contain NaN or infinite values")
    if art.embeddings is None and not art.has_lora and not art.hypernetwork:
        raise bad("concept has neither embeddings nor LoRA weights")
    if bool(art.hypernetwork) != (art.hyper_structure is not None):
        raise bad("hypernetwork weights without their structure (or a structure without weights)")
    if art.hypernetwork and not all(torch.isfinite(t).all() for t in art.hypernetwork.values()):
        raise bad("hypernetwork weights contain NaN or infinite values")
    for where, sd in (("UNet", art.unet_lora), ("text encoder", art.text_lora)):
        _validate_lora(sd, art.rank, where)


def _validate_lora(sd: dict[str, torch.Tensor], rank: int | None, where: str) -> None:
    bad = IncompatibleArtifact
    if not sd:
        return
    if not rank or rank < 1:
        raise bad(f"{where} LoRA without a rank")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise bad(f"unexpected {where} LoRA key {key!r}")
        modules.setdefault(m["module"], {})[m["ab"]] = t
    for module, pair in modules.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise bad(f"{where} LoRA layer {module} lacks its A or B matrix")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise bad(f"{where} LoRA layer {module} has rank {a.shape[0]}, expected {rank}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise bad(f"{where} LoRA layer {module} contains NaN or infinite values")


def lora_modules(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (A, B)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        m = _LORA_KEY.match(key)
        if m is not None:
            out.setdefault(m["module"], {})[m["ab"]] = t
    return {k: (v["lora_A"], v["lora_B"]) for k, v in out.items() if len(v) == 2}


def check_compatible(art: ConceptArtifact, pipe) -> None:
    """Raise ``IncompatibleArtifact`` unless ``art`` fits ``pipe``: hidden size, LoRA layers and shapes."""
    expected = int(pipe.text_encoder.config.hidden_size)
    if art.hidden_size != expected:
        raise IncompatibleArtifact(
            f"made for a different base model (hidden size {art.hidden_size}, expected {expected})")
    if art.embeddings is not None and art.embeddings.shape[-1] != expected:
        raise IncompatibleArtifact(f"made for a different base model (embedding size {art.embeddings.shape[-1]}, "
                                   f"expected {expected})")
    for where, sd, model in (("UNet", art.unet_lora, pipe.unet), ("text encoder", art.text_lora, pipe.text_encoder)):
        if not sd:
            continue
        for module, (a, b) in lora_modules(sd).items():
            try:
                layer = model.get_submodule(module)
            except AttributeError:
                raise IncompatibleArtifact(
                    f"made for a different base model (the {where} has no layer {module})") from None
            base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
            w = getattr(base, "weight", None)
            if w is None:
                raise IncompatibleArtifact(f"made for a different base model ({where} layer {module} has no weight)")
            fan_out, fan_in = w.shape[0], w.shape[1]
            if a.shape[1] != fan_in or b.shape[0] != fan_out:
                raise IncompatibleArtifact(
                    f"made for a different base model ({where} layer {module} is {fan_in}->{fan_out}, "
                    f"LoRA is {a.shape[1]}->{b.shape[0]})")
