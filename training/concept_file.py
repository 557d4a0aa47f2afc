"""THE concept-file validator: one torch-free reading of a concept file, used by every entry point.

``/kit import`` and ``/style import`` (``bot.imports``), the worker's load (``gpu_worker.concepts`` via
``training.formats.load_concept``), ``training.artifact.load_artifact`` and the CLI all call ``read_concept``
first; the worker then only turns the returned arrays into tensors. So a file the bot accepts is a file the
worker composes, and a refusal reads the same everywhere: one sentence that says what to do
(``IncompatibleArtifact`` for a broken file, ``IncompatibleArtifact`` for a file that does not fit the base model).

Layouts (``ConceptFile.layout``), keyed by what the tensors are called (``training.concept_layouts``):

==============  ==============================================================================================
kitbooth        our own file (``training.artifact``): ``embeddings``, ``unet.<path>.lora_A/B.weight``,
                ``text_encoder.<path>...``, ``__metadata__["format"] == "kitbooth.concept"``
diffusers-ti    ``{"<token>": (n, hidden)}`` (one tensor)
a1111-ti        ``emb_params`` or ``string_to_param.*``: ``(n, hidden)``
kohya-lora      ``lora_unet_<path>`` / ``lora_te_text_model_<path>`` ``.lora_down/.lora_up.weight`` + ``.alpha``
                (LoCon conv layers included), optionally one ``bundle_emb.<name>.string_to_param.*`` embedding
diffusers-lora  ``unet.<path>.lora.down/up.weight``, peft ``lora_A/B``, old ``processor.to_q_lora`` keys,
                ``text_encoder.<path>...``; ``lora_adapter_metadata`` may carry the alpha
a1111-hypernet  an A1111 hypernetwork: its ``.pt`` (read without torch by ``training.torch_pickle``, an allow-list
                unpickler) or our ``.safetensors`` twin (``"<size>.<0|1>.linear.<i>.<weight|bias>"``, the
                structure as JSON metadata); checked by ``training.hypernetwork_layout`` (structure, every shape, a
                width of the base model's attention). Our own files hold one as ``hypernetwork.*`` tensors.
==============  ==============================================================================================

Checked: the safetensors container field by field (``training.safetensors_file``); every float finite and
within half precision (the worker may run fp16), alpha included; dtypes; each LoRA layer is a layer of the
base model (``training.base_layers``) with exactly peft's shapes, has both halves, a rank in
1..``LORA_RANK_MAX``; 1..``TI_VECTORS_MAX`` vectors of the text width; metadata types; and no name that
reads as a reserved token (``<kb-slot-N>``, ``<|...|>``) after NFKC + lower-casing.

Consent: a caller that names the kind it means (``kind=``: the bot's ``/kit import`` and ``/style import``, the
worker's load, ``kitbooth import``) gets a KitBooth face refused as anything but a face — our own file of kind
``face``, or any file that says it holds one (``kitbooth_kind``/``kind`` metadata, or a trigger, embedding or
output name such as ``<kb-face-0>`` / ``alice-kb-face``: see ``face_marks``). A face is only its owner's.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kitbooth import limits
from kitbooth.errors import IncompatibleArtifact
from training import safetensors_file, torch_pickle
from training.base_layers import BaseModel
from training.concept_layouts import Parsed, parse_layout
from training.hypernetwork_layout import check_hypernetwork, flatten_a1111, is_a1111_dict, own_structure

FP16_MAX = 65504.0
OWN_FORMAT = "kitbooth.concept"
OWN_FORMAT_VERSION = "1"
KINDS = ("face", "kit", "style")
METHODS = ("pivotal", "lora", "ti", "imported", "dreambooth", "hypernetwork")

NOT_OWN = ("This is not a KitBooth concept file — make it one with `kitbooth import FILE --kind kit --out "
           "NAME.safetensors` first.")
WRONG_BASE = ("This file was made for a different base model ({guess}) — KitBooth uses {base}; look for a version "
              "of it made for {base}.")


@dataclass(frozen=True)
class LoraPair:
    """One LoRA layer: ``down`` (A) and ``up`` (B) as peft shapes them, ``alpha`` None = the rank."""

    part: str  # "unet" | "text"
    path: str  # module path in the base model (text: without "text_model.")
    down: np.ndarray
    up: np.ndarray
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class ConceptFile:
    """A validated concept file, torch-free; ``training.formats`` / ``training.artifact`` build tensors from it."""

    layout: str
    source: str  # "kitbooth" | "diffusers" | "a1111" | "kohya"
    hidden_size: int
    tokens: tuple[str, ...]  # the trigger tokens the worker uses
    embeddings: np.ndarray | None = None  # (len(tokens), hidden) when the file has vectors
    lora: tuple[LoraPair, ...] = ()
    embedding_names: tuple[str, ...] = ()  # the embeddings' names as the file writes them
    metadata: dict[str, str] = field(default_factory=dict)
    own: dict[str, object] = field(default_factory=dict)  # kitbooth layout: kind, method, rank, alpha, steps ...
    size_bytes: int = 0
    hypernetwork: dict[str, np.ndarray] = field(default_factory=dict)  # "<size>.<0=k|1=v>.<key>" -> weight
    hyper_structure: dict | None = None  # A1111's structure fields (training.hypernetwork_layout.read_structure)

    @property
    def kind(self) -> str:
        if self.hypernetwork:
            return "hypernetwork"
        if self.lora and self.embeddings is not None:
            return "lora+embedding"
        return "lora" if self.lora else "embedding"

    @property
    def rank(self) -> int | None:
        return max((p.rank for p in self.lora), default=None)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(sorted({"unet" if p.part == "unet" else "text_encoder" for p in self.lora}))

    @property
    def token_count(self) -> int:
        return 0 if self.embeddings is None else int(self.embeddings.shape[0])

    def summary(self) -> str:
        parts = []
        if self.embeddings is not None:
            parts.append(f"embedding, {self.token_count} vector{'s' * (self.token_count != 1)}")
        if self.lora:
            parts.append(f"LoRA rank {self.rank} on {' + '.join(self.targets)}")
        if self.hyper_structure is not None:
            h = self.hyper_structure
            parts.append(f"hypernetwork {','.join(f'{m:g}' for m in h['layer_structure'])} {h['activation_func']}"
                         f" on widths {', '.join(sorted({k.split('.', 1)[0] for k in self.hypernetwork}))}")
        return f"{'; '.join(parts)} ({self.size_bytes / 1e6:.1f} MB)"


# --- names ------------------------------------------------------------------------------------------------
def is_reserved(name: str) -> bool:
    """A name that would read as the composer's slot tokens or CLIP's special tokens (the worker's rule, wider)."""
    t = unicodedata.normalize("NFKC", name).lower()
    return bool(re.search(r"kb[-_ ]?slot", t)) or "<|" in t or "|>" in t


def safe_stem(name: str) -> str:
    """A trigger / file stem from a name: ``"My Kit.safetensors"`` -> ``"my-kit"``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-_").lower()
    return stem[:40] or "concept"


_FACE_NAME = re.compile(r"kb[-_ ]?face")
_KIND_KEYS = ("kitbooth_kind", "kind")
_NAME_KEYS = ("kitbooth_trigger", "trigger", "ss_trigger", "ss_output_name", "name", "modelspec.title")
FACE_REFUSED = ("This is a KitBooth face concept, and a face can only be used by the person it belongs to — "
                "import a kit or style file instead.")


def face_marks(names: list[str], metadata: dict[str, str]) -> bool:
    """True when a file says it holds a KitBooth face: its kind metadata, or a name with our face token
    (``kb-face``, after NFKC + lower-casing, so ``<KB-FACE-0>`` and ``alice-kb_face`` count)."""
    if any(metadata.get(k, "").strip().lower() == "face" for k in _KIND_KEYS):
        return True
    texts = names + [metadata[k] for k in _NAME_KEYS if metadata.get(k)]
    return any(_FACE_NAME.search(unicodedata.normalize("NFKC", t).lower()) for t in texts)


def _refuse_kind(kind: str | None, own_kind: object, names: list[str], metadata: dict[str, str]) -> None:
    """The intended ``kind`` against what the file is (None: the caller takes any kind, e.g. a local CLI run)."""
    if kind is None:
        return
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if kind != "face" and (own_kind == "face" or face_marks(names, metadata)):
        raise IncompatibleArtifact(FACE_REFUSED, key="refusal.import_face")
    if own_kind is not None and own_kind != kind:
        raise IncompatibleArtifact(f"This KitBooth concept file holds a {own_kind}, not a {kind} — use it as a "
                                   f"{own_kind}.")


def _refuse_reserved(names: list[str]) -> None:
    for name in names:
        if is_reserved(name):
            raise IncompatibleArtifact(f"This file's trigger `{safetensors_file.safe_name(name)[:40]}` uses a token "
                               "KitBooth reserves — rename the embedding or trigger and upload it again.")


# --- entry points -----------------------------------------------------------------------------------------
def read_concept(data: bytes, base: BaseModel | None, *, filename: str = "concept.safetensors",
                 trigger: str | None = None, max_bytes: int = limits.CONCEPT_FILE_BYTES,
                 foreign_base: BaseModel | None = None, kind: str | None = None) -> ConceptFile:
    """Validate concept-file bytes against ``base``; ``kind``: what the caller means to use it as (a face is
    refused as anything else, an own file of another kind too; None: any). ``base`` None: KitBooth's own files are checked without a
    layer table, others against ``foreign_base`` (refused when that is None too). Raises ``IncompatibleArtifact``
    (an ``InvalidInput``) with one sentence."""
    if len(data) > max_bytes:
        # MiB, the size rounded up and the limit down: a file one byte over never reads as equal to the limit.
        raise IncompatibleArtifact(f"That file is {math.ceil(len(data) / 2**20 * 10) / 10:.1f} MB; the limit for a "
                                   f"concept file is {math.floor(max_bytes / 2**20 * 10) / 10:.1f} MB.")
    if not data:
        raise IncompatibleArtifact("That file is empty — upload the `.safetensors` LoRA or embedding file itself.",
                                   key="refusal.import_empty")
    if torch_pickle.looks_like_torch_zip(data):  # only an A1111 hypernetwork .pt, read without torch
        obj = torch_pickle.load(data)
        if not is_a1111_dict(obj):
            raise IncompatibleArtifact(safetensors_file.PICKLE_REFUSED.format(name=safetensors_file.safe_name(filename)))
        tensors, metadata = flatten_a1111(obj)
    else:
        tensors, metadata = safetensors_file.read(data, filename)
    return from_tensors(tensors, metadata, base, filename=filename, trigger=trigger, size_bytes=len(data),
                        foreign_base=foreign_base, kind=kind)


def from_tensors(tensors: dict[str, np.ndarray], metadata: dict[str, str], base: BaseModel | None, *,
                 filename: str = "concept", trigger: str | None = None, size_bytes: int = 0,
                 foreign_base: BaseModel | None = None, kind: str | None = None) -> ConceptFile:
    """The checks after the container: layout, values, shapes against ``base``, names."""
    own = metadata.get("format") == OWN_FORMAT
    if base is None and not own:
        base = foreign_base
    if base is None and not own:
        raise IncompatibleArtifact(NOT_OWN)
    hidden = base.hidden_size if base is not None else _own_hidden(metadata)
    parsed = parse_layout(tensors, metadata, own=own, base=base, base_label=_label(base))
    for key, arr in tensors.items():
        _check_values(key, arr, alpha=key in parsed.alphas)
    lora = _check_lora(parsed, base, metadata)
    emb = _check_embeddings(parsed, hidden, base)
    structure = None if not parsed.hyper else check_hypernetwork(
        parsed.hyper, own_structure(metadata) if own else parsed.hyper_fields or {}, base)
    if parsed.hyper_fields is not None:  # the twin's fields are JSON: its names and kind are checked decoded
        metadata = {k: v for k, v in parsed.hyper_fields.items() if isinstance(v, str)}
    if own:
        fields = _own_fields(metadata, hidden, lora)
        if (fields["method"] == "hypernetwork" and structure is None) or (
                structure is not None and fields["method"] not in ("hypernetwork", "imported")):
            raise IncompatibleArtifact("This KitBooth concept file's method does not match its weights — retrain or "
                                       "re-export it.")
        tokens = list(fields["tokens"])  # type: ignore[call-overload]
        if emb is not None and emb.shape[0] != len(tokens):
            raise IncompatibleArtifact(f"This concept file has {emb.shape[0]} vectors for {len(tokens)} trigger tokens — "
                               "retrain or re-export it.")
    else:
        fields = {}
        named = parsed.embedding_name or (metadata.get("name") if structure is not None else None)
        stem = safe_stem(named) if named else safe_stem(filename)
        tokens = [f"<{stem}-{i}>" for i in range(emb.shape[0])] if emb is not None else [trigger or stem]
    if emb is None and not lora and structure is None:
        raise IncompatibleArtifact("This file holds neither embedding vectors nor LoRA weights — upload the LoRA or "
                           "embedding file itself.")
    declared = [n for n in (parsed.embedding_name,) if n] + parsed.embedding_keys + list(tokens)
    declared += _declared_triggers(metadata)
    _refuse_reserved(declared)
    _refuse_kind(kind, fields.get("kind"), declared, metadata)
    return ConceptFile(
        layout=parsed.layout, source=parsed.source, hidden_size=hidden, tokens=tuple(tokens), embeddings=emb,
        lora=tuple(lora), embedding_names=tuple(parsed.embedding_keys), metadata=dict(metadata), own=fields,
        size_bytes=size_bytes, hypernetwork=dict(parsed.hyper), hyper_structure=structure,
    )


def _label(base: BaseModel | None) -> str:
    return base.name if base is not None else "Stable Diffusion 1.5"


def _own_hidden(metadata: dict[str, str]) -> int:
    raw = metadata.get("hidden_size", "")
    if not raw.isdigit() or int(raw) < 1:
        raise IncompatibleArtifact("This concept file's metadata has no valid hidden_size — retrain or re-export it.")
    return int(raw)


# --- values -----------------------------------------------------------------------------------------------
def _check_values(key: str, arr: np.ndarray, *, alpha: bool) -> None:
    name = safetensors_file.safe_name(key)[:80]
    if arr.dtype.kind not in "fiu" or (arr.dtype.kind in "iu" and not alpha) or arr.dtype.itemsize == 1:
        raise IncompatibleArtifact(f"Tensor `{name}` is not floating point — re-export the file with float16 or float32 "
                           "weights.")
    if arr.size == 0:
        raise IncompatibleArtifact(f"Tensor `{name}` is empty — re-export the file from a working model.")
    f = arr.astype(np.float64, copy=False)
    if not np.isfinite(f).all():
        raise IncompatibleArtifact(f"Tensor `{name}` holds NaN or infinite values — re-export the file from a working model.")
    if float(np.abs(f).max()) > FP16_MAX:
        raise IncompatibleArtifact(f"Tensor `{name}` holds values too large for half precision — re-export it from a "
                           "working model.")


def _finite_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IncompatibleArtifact(f"This file's {what} is not a number — re-export the file.")
    x = float(value)
    if not np.isfinite(x) or abs(x) > FP16_MAX:
        raise IncompatibleArtifact(f"This file's {what} is not a finite number within half precision — re-export the file.")
    return x


def _check_embeddings(parsed: Parsed, hidden: int, base: BaseModel | None) -> np.ndarray | None:
    if parsed.embedding is None:
        return None
    e = parsed.embedding
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2:
        raise IncompatibleArtifact(f"The embedding has shape {list(parsed.embedding.shape)}; expected (vectors, width) — "
                           "upload a textual-inversion embedding.")
    if e.shape[1] != hidden:
        guess, label = _guess_base(int(e.shape[1])), _label(base)
        raise IncompatibleArtifact(WRONG_BASE.format(guess=guess, base=label), key="refusal.import_wrong_base",
                                   fields={"guess": guess, "base": label})
    if not 1 <= e.shape[0] <= limits.TI_VECTORS_MAX:
        raise IncompatibleArtifact(f"The embedding has {e.shape[0]} vectors; KitBooth accepts 1 to {limits.TI_VECTORS_MAX}"
                           " — use a smaller embedding.")
    return np.ascontiguousarray(e, dtype=np.float32)


def _guess_base(width: int) -> str:
    return {1024: "Stable Diffusion 2.x?", 1280: "SDXL?", 2048: "SDXL?", 4096: "SD 3 / Flux?"}.get(
        width, f"text width {width}")


def _check_lora(parsed: Parsed, base: BaseModel | None, metadata: dict[str, str]) -> list[LoraPair]:
    default_alpha = _adapter_alphas(metadata) if parsed.layout == "diffusers-lora" else {}
    if parsed.layout == "kitbooth":  # one alpha for every layer, in the metadata
        try:
            own = float(metadata.get("alpha") or "nan")
        except ValueError:
            own = float("nan")
        default_alpha = {"unet": own, "text": own} if np.isfinite(own) else {}
    out: list[LoraPair] = []
    for (part, path), halves in sorted(parsed.layers.items()):
        where = "UNet" if part == "unet" else "text-encoder"
        if "A" not in halves or "B" not in halves:
            raise IncompatibleArtifact(f"LoRA layer `{path[:80]}` lacks its {'down' if 'A' not in halves else 'up'} "
                               "matrix — re-export the complete LoRA.")
        a, b = halves["A"], halves["B"]
        if a.ndim not in (2, 4) or a.shape[0] < 1 or b.ndim != a.ndim or b.shape[1] != a.shape[0]:
            raise IncompatibleArtifact(f"LoRA layer `{path[:80]}` has down/up matrices that do not pair up — re-export "
                               "the LoRA.")
        rank = int(a.shape[0])
        if rank > limits.LORA_RANK_MAX:
            raise IncompatibleArtifact(f"LoRA layer `{path[:80]}` has rank {rank}; KitBooth accepts ranks up to "
                               f"{limits.LORA_RANK_MAX} — use a smaller LoRA.")
        if base is not None:
            layer = base.layers(part).get(path)
            if layer is None:
                raise IncompatibleArtifact(f"`{path[:80]}` is not a {where} layer of {base.name}, so this LoRA "
                                           f"was made for another model — use a {base.name} LoRA.")
            want_a, want_b = layer.lora_shapes(rank)
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                guess = _guess_base(int(a.shape[1])) if layer.fan_in == base.hidden_size else "another model?"
                raise IncompatibleArtifact(WRONG_BASE.format(guess=guess, base=base.name),
                                           key="refusal.import_wrong_base", fields={"guess": guess, "base": base.name})
        alpha = None
        if "alpha" in halves:
            if halves["alpha"].size != 1:
                raise IncompatibleArtifact(f"LoRA layer `{path[:80]}` has an alpha that is not one number — re-export it.")
            alpha = _finite_number(float(halves["alpha"].reshape(-1)[0]), f"alpha of layer {path[:60]}")
        elif part in default_alpha:
            alpha = default_alpha[part]
        scale = abs(alpha if alpha is not None else rank) / rank
        if float(np.abs(b.astype(np.float64)).max()) * scale > FP16_MAX:  # alpha/rank is folded into B
            raise IncompatibleArtifact(f"LoRA layer `{path[:80]}` has an alpha too large for its weights — re-export it.")
        out.append(LoraPair(part, path, np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
                            alpha))
    return out


def _adapter_alphas(metadata: dict[str, str]) -> dict[str, float]:
    raw = metadata.get("lora_adapter_metadata")
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise IncompatibleArtifact("This file's lora_adapter_metadata is not a JSON object — re-export the LoRA.")
    out = {}
    for part, prefix in (("unet", "unet"), ("text", "text_encoder")):
        if f"{prefix}.lora_alpha" in meta:
            out[part] = _finite_number(meta[f"{prefix}.lora_alpha"], f"{prefix} lora_alpha")
    return out


def _declared_triggers(meta: dict[str, str]) -> list[str]:
    names = [meta[k] for k in ("kitbooth_trigger", "trigger", "ss_trigger") if meta.get(k)]
    if meta.get("format") != OWN_FORMAT and meta.get("tokens"):
        try:
            parsed = json.loads(meta["tokens"])
        except ValueError:
            parsed = [meta["tokens"]]
        names += [str(t) for t in (parsed if isinstance(parsed, list) else [parsed])]
    return names


# --- our own metadata -------------------------------------------------------------------------------------
def _own_fields(meta: dict[str, str], hidden: int, lora: list[LoraPair]) -> dict[str, object]:
    def bad(what: str) -> IncompatibleArtifact:
        return IncompatibleArtifact(f"This KitBooth concept file has {what} — retrain or re-export it.")

    if meta.get("format_version") != OWN_FORMAT_VERSION:
        raise bad(f"format version {safetensors_file.safe_name(meta.get('format_version', ''))[:10]!r}, "
                  f"not {OWN_FORMAT_VERSION}")
    if meta.get("kind") not in KINDS:
        raise bad("an unknown kind")
    if meta.get("method") not in METHODS:
        raise bad("an unknown training method")
    if meta.get("hidden_size") != str(hidden):
        raise IncompatibleArtifact(WRONG_BASE.format(guess=_guess_base(_own_hidden(meta)), base="this base model"))
    try:
        tokens = json.loads(meta.get("tokens", ""))
        extra = json.loads(meta.get("extra") or "{}")
    except ValueError:
        raise bad("unreadable tokens or extra metadata") from None
    if (not isinstance(tokens, list) or not 1 <= len(tokens) <= limits.TI_VECTORS_MAX
            or not all(isinstance(t, str) and t.strip() and " " not in t for t in tokens)
            or len(set(tokens)) != len(tokens)):
        raise bad("no valid trigger tokens")
    if not isinstance(extra, dict):
        raise bad("extra metadata that is not an object")
    rank_s, alpha_s, steps_s = meta.get("rank", ""), meta.get("alpha", ""), meta.get("steps") or "0"
    if not steps_s.isdigit():
        raise bad("a step count that is not a number")
    rank = int(rank_s) if rank_s.isdigit() else None
    if lora and (rank is None or any(p.rank != rank for p in lora)):
        raise bad("LoRA layers whose rank differs from its metadata")
    if not lora and rank_s:
        raise bad("a rank but no LoRA layers")
    try:
        alpha = float(alpha_s) if alpha_s else None
    except ValueError:
        raise bad("an alpha that is not a number") from None
    if alpha is not None:
        _finite_number(alpha, "alpha")
    return {"kind": meta["kind"], "method": meta["method"], "tokens": tokens, "rank": rank if lora else None,
            "alpha": alpha if lora else None, "steps": int(steps_s), "extra": extra,
            "base_model": meta.get("base_model", ""), "created": meta.get("created", ""),
            "version": meta.get("version", "")}
