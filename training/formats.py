"""Import and export of concepts in the community's formats: diffusers, A1111 and kohya.

Import (``import_file``) sniffs the bytes, never the extension alone, and never unpickles: a ``.pt``/``.bin`` is
read only with ``torch.load(weights_only=True)`` (plain tensors and containers; anything else is refused).

==================  ==========================================================================================
diffusers TI        ``learned_embeds.safetensors``: ``{token: (n, hidden)}`` (one key; diffusers names the extra
                    vectors ``token_1``, ``token_2`` ...)
diffusers LoRA      ``pytorch_lora_weights.safetensors`` as ``StableDiffusionPipeline.save_lora_weights`` writes
                    it: ``unet.<path>.lora.down/up.weight`` (or peft ``lora_A/B``), ``text_encoder.<path>...``
A1111 embedding     ``.pt`` with ``string_to_param: {"*": (n, hidden)}``, or a one-tensor ``.safetensors``
kohya TI            ``.safetensors`` with ``emb_params: (n, hidden)``
kohya LoRA          ``lora_unet_<path with _>.lora_down/lora_up.weight`` + ``.alpha``, ``lora_te_...`` for the text
                    encoder (A1111's native LoRA format too); ``bundle_emb.<name>.string_to_param.*`` embeddings
==================  ==========================================================================================

Export (``export``): ``diffusers`` writes ``learned_embeds.safetensors`` and/or ``pytorch_lora_weights.safetensors``
(loadable by diffusers' own ``load_textual_inversion`` / ``load_lora_weights``; the LoRA scale alpha/rank is baked
into B, so no alpha metadata is needed); ``a1111`` writes ``<name>.pt`` (string_to_param) and
``<name>-lora.safetensors`` (kohya keys); ``kohya`` writes ``<name>.safetensors`` (emb_params) and
``<name>-lora.safetensors``. A1111/kohya exports re-import to the same tensors.

Imported LoRAs are normalised to one rank and alpha: layers of a smaller rank are zero-padded and a per-layer
alpha/rank is folded into B (both exact), so ``ConceptArtifact.rank``/``alpha`` describe every layer.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch

from kitbooth.errors import IncompatibleArtifact
from training.artifact import FORMAT as CONCEPT_FORMAT
from training.artifact import (
    ConceptArtifact,
    load_artifact,
    lora_modules,
    read_metadata,
    validate,
    write_atomic,
)

Format = Literal["diffusers", "a1111", "kohya"]
FORMATS: tuple[str, ...] = ("diffusers", "a1111", "kohya")
MAX_IMPORT_BYTES = 512 * 1024 * 1024
SD15_HIDDEN = 768

DIFFUSERS_TI_NAME = "learned_embeds.safetensors"
DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"

# Module-name parts that contain "_" (kohya flattens "." to "_"; these are put back together).
_COMPOUNDS = sorted([
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "proj_in",
    "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
    "linear_1", "linear_2", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "layer_norm1", "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding",
], key=len, reverse=True)
_KOHYA_UNET, _KOHYA_TE = "lora_unet_", "lora_te_"


# ---------------------------------------------------------------------------------------------------------
# naming helpers


def kohya_name(path: str, *, text: bool) -> str:
    """``down_blocks.0...attn1.to_q`` -> ``lora_unet_down_blocks_0_..._attn1_to_q`` (text: ``lora_te_text_model_...``)."""
    if text:
        path = path if path.startswith("text_model.") else "text_model." + path
        return _KOHYA_TE + path.replace(".", "_")
    return _KOHYA_UNET + path.replace(".", "_")


def module_path_from_kohya(flat: str) -> str:
    """Invert ``kohya_name`` for SD 1.5 UNet / CLIP layer names (prefix already removed)."""
    dotted = flat.replace("_", ".")
    for c in _COMPOUNDS:
        dotted = re.sub(r"(?<![^.])" + re.escape(c.replace("_", ".")) + r"(?![^.])", c, dotted)
    return dotted


def _strip_text_model(path: str) -> str:
    # transformers 5's CLIPTextModel has no ``text_model`` wrapper: its layers are ``encoder.layers.N...``
    return path[len("text_model."):] if path.startswith("text_model.") else path


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-_").lower()
    return stem[:40] or "concept"


def base_name(art: ConceptArtifact) -> str:
    """A file/trigger stem for exports: ``<kb-face-0>`` -> ``kb-face``."""
    first = art.tokens[0].strip("<>")
    return _safe_stem(re.sub(r"-0$", "", first))


# ---------------------------------------------------------------------------------------------------------
# import


def import_file(path_or_bytes: str | Path | bytes, filename: str | None = None, *, kind: str,
                base_model: str = "", pipe=None, trigger: str | None = None) -> ConceptArtifact:
    """Read a concept file in any supported format into a ``ConceptArtifact`` (method "imported", unless it is
    a KitBooth concept file already). ``pipe`` (optional): also ``check_compatible`` against it.
    Raises ``IncompatibleArtifact`` with a short reason for anything unreadable, unsafe or for another model."""
    from training.artifact import check_compatible

    if isinstance(path_or_bytes, bytes | bytearray):
        data = bytes(path_or_bytes)
        filename = filename or "concept"
    else:
        p = Path(path_or_bytes)
        if p.stat().st_size > MAX_IMPORT_BYTES:
            raise IncompatibleArtifact("file too large for a concept (over 512 MB)")
        data = p.read_bytes()
        filename = filename or p.name
    if not data:
        raise IncompatibleArtifact("empty file")
    if len(data) > MAX_IMPORT_BYTES:
        raise IncompatibleArtifact("file too large for a concept (over 512 MB)")
    stem = _safe_stem(filename)

    if _looks_like_safetensors(data):
        try:
            metadata = read_metadata(data)
        except ValueError as exc:
            raise IncompatibleArtifact("broken .safetensors header") from exc
        if metadata.get("format") == CONCEPT_FORMAT:
            art = load_artifact(data)
        else:
            from safetensors import SafetensorError
            from safetensors.torch import load

            try:
                tensors = load(data)
            except (SafetensorError, RuntimeError, ValueError) as exc:
                raise IncompatibleArtifact("broken .safetensors file") from exc
            art = _from_tensors(tensors, metadata, kind=kind, stem=stem, base_model=base_model, trigger=trigger)
    elif data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":
        art = _from_torch_file(data, kind=kind, stem=stem, base_model=base_model, trigger=trigger)
    else:
        raise IncompatibleArtifact("unknown file format — expected a .safetensors or .pt embedding/LoRA")
    if art.hidden_size == 0:  # a LoRA that touches no layer fed by the text encoder: any SD 1.5-family model
        art.hidden_size = int(pipe.text_encoder.config.hidden_size) if pipe is not None else SD15_HIDDEN
    validate(art)
    if pipe is not None:
        check_compatible(art, pipe)
    return art


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def _from_torch_file(data: bytes, *, kind: str, stem: str, base_model: str, trigger: str | None):
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for objects we refuse to build, or a corrupt file
        raise IncompatibleArtifact(
            "this .pt file holds more than plain tensors and is not loaded (unsafe pickle) — "
            "use a .safetensors version of it") from exc
    if not isinstance(obj, dict):
        raise IncompatibleArtifact("unrecognised .pt file (not a dict of tensors)")
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(obj.get("string_to_param"), dict):
        params = obj["string_to_param"]
        tensor = params.get("*", next(iter(params.values()), None))
        if not isinstance(tensor, torch.Tensor):
            raise IncompatibleArtifact("A1111 embedding without a tensor")
        name = obj.get("name")
        return _ti_artifact(tensor, kind=kind, stem=_safe_stem(name) if isinstance(name, str) and name else stem,
                            base_model=base_model, source="a1111")
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            tensors[str(k)] = v
    if not tensors:
        raise IncompatibleArtifact("unrecognised .pt file (no tensors)")
    return _from_tensors(tensors, {}, kind=kind, stem=stem, base_model=base_model, trigger=trigger)


def _from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, kind: str, stem: str,
                  base_model: str, trigger: str | None) -> ConceptArtifact:
    keys = list(tensors)
    if any(k in ("clip_g", "clip_l") for k in keys):
        raise IncompatibleArtifact("made for a different base model (an SDXL embedding; KitBooth uses SD 1.5)")
    if any(re.search(r"(hada_|lokr_|\.oft_|\.diff$|dora_scale)", k) for k in keys):
        raise IncompatibleArtifact("LyCORIS/LoHa/LoKr/DoRA files are not supported — use a plain LoRA")
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys) or any(
            "input_blocks" in k or "output_blocks" in k or "middle_block" in k for k in keys):
        raise IncompatibleArtifact("made for a different base model (SDXL-style layer names; KitBooth uses SD 1.5)")
    if any(k.startswith((_KOHYA_UNET, _KOHYA_TE)) for k in keys):
        return _from_kohya_lora(tensors, metadata, kind=kind, stem=stem, base_model=base_model, trigger=trigger)
    if any(".lora" in k or "_lora." in k for k in keys):
        return _from_diffusers_lora(tensors, metadata, kind=kind, stem=stem, base_model=base_model, trigger=trigger)
    # embeddings
    if "emb_params" in tensors:
        return _ti_artifact(tensors["emb_params"], kind=kind, stem=stem, base_model=base_model, source="kohya")
    star = [k for k in keys if k.endswith("*")]
    if len(star) == 1:
        return _ti_artifact(tensors[star[0]], kind=kind, stem=stem, base_model=base_model, source="a1111")
    if len(tensors) == 1:
        (token, tensor), = tensors.items()
        return _ti_artifact(tensor, kind=kind, stem=_safe_stem(token.strip("<>")) if token.strip("<>*") else stem,
                            base_model=base_model, source="diffusers")
    raise IncompatibleArtifact("unrecognised concept file (neither an embedding nor a LoRA)")


def _ti_artifact(tensor: torch.Tensor, *, kind: str, stem: str, base_model: str, source: str) -> ConceptArtifact:
    t = tensor.detach().float()
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or not 1 <= t.shape[0] <= 16:
        raise IncompatibleArtifact(f"embedding has an unexpected shape {tuple(tensor.shape)}")
    return ConceptArtifact(
        kind=kind, method="imported", base_model=base_model, hidden_size=int(t.shape[1]),
        tokens=[f"<{stem}-{i}>" for i in range(t.shape[0])], embeddings=t.contiguous(), unet_lora={}, text_lora={},
        rank=None, alpha=None, steps=0, created=_now(), version=_version(), extra={"source_format": source},
    )


def _from_kohya_lora(tensors, metadata, *, kind, stem, base_model, trigger) -> ConceptArtifact:
    layers: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    emb: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.startswith("bundle_emb."):
            emb[key.split(".")[1]] = t
            continue
        name, _, suffix = key.partition(".")
        if name.startswith(_KOHYA_UNET):
            where, flat = "unet", name[len(_KOHYA_UNET):]
        elif name.startswith(_KOHYA_TE):
            where, flat = "text", name[len(_KOHYA_TE):]
        else:
            raise IncompatibleArtifact(f"unexpected key {key!r} in a kohya LoRA")
        part = {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}.get(suffix)
        if part is None:
            raise IncompatibleArtifact(f"unsupported kohya LoRA tensor {key!r}")
        path = module_path_from_kohya(flat)
        layers.setdefault((where, _strip_text_model(path) if where == "text" else path), {})[part] = t
    unet, text, rank, alpha = _normalise_lora(layers)
    embeddings, tokens = None, None
    if emb:
        if len(emb) > 1:
            raise IncompatibleArtifact("LoRA bundles several embeddings; KitBooth supports one per concept")
        (ename, et), = emb.items()
        et = et.float() if et.dim() == 2 else et.float()[None]
        embeddings, tokens = et.contiguous(), [f"<{_safe_stem(ename)}-{i}>" for i in range(et.shape[0])]
    return _lora_artifact(unet, text, rank, alpha, kind=kind, stem=stem, base_model=base_model, trigger=trigger,
                          source="kohya", embeddings=embeddings, tokens=tokens)


_DIFFUSERS_SUFFIXES = [
    (re.compile(r"\.lora\.down\.weight$"), "A"), (re.compile(r"\.lora\.up\.weight$"), "B"),
    (re.compile(r"\.lora_linear_layer\.down\.weight$"), "A"), (re.compile(r"\.lora_linear_layer\.up\.weight$"), "B"),
    (re.compile(r"\.lora_A(\.[^.]+)?\.weight$"), "A"), (re.compile(r"\.lora_B(\.[^.]+)?\.weight$"), "B"),
    (re.compile(r"\.alpha$"), "alpha"),
]
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def _from_diffusers_lora(tensors, metadata, *, kind, stem, base_model, trigger) -> ConceptArtifact:
    layers: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("text_encoder."):
            where, rest = "text", key[len("text_encoder."):]
        elif key.startswith("unet."):
            where, rest = "unet", key[len("unet."):]
        elif key.startswith(("down_blocks.", "up_blocks.", "mid_block.")):
            where, rest = "unet", key
        elif key.startswith(("text_model.", "encoder.layers.")):
            where, rest = "text", key
        else:
            raise IncompatibleArtifact(f"unexpected key {key!r} in a diffusers LoRA")
        m = _OLD_PROCESSOR.search(rest)
        if m:
            proj = m.group(1) + (".0" if m.group(1) == "to_out" else "")
            path, part = rest[: m.start()] + "." + proj, "A" if m.group(2) == "down" else "B"
        else:
            found = next(((rest[: mm.start()], kind_) for rx, kind_ in _DIFFUSERS_SUFFIXES
                          if (mm := rx.search(rest))), None)
            if found is None:
                raise IncompatibleArtifact(f"unsupported LoRA tensor {key!r}")
            path, part = found
        if where == "text":
            path = _strip_text_model(path)
        layers.setdefault((where, path), {})[part] = t
    # diffusers' adapter metadata can carry a LoRA alpha different from the rank
    try:
        meta = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        meta = {}
    for (where, _), parts in layers.items():
        prefix = "unet" if where == "unet" else "text_encoder"
        a = meta.get(f"{prefix}.lora_alpha")
        if "alpha" not in parts and isinstance(a, int | float) and "A" in parts:
            parts["alpha"] = torch.tensor(float(a))
    unet, text, rank, alpha = _normalise_lora(layers)
    return _lora_artifact(unet, text, rank, alpha, kind=kind, stem=stem, base_model=base_model, trigger=trigger,
                          source="diffusers")


def _normalise_lora(layers: dict[tuple[str, str], dict[str, torch.Tensor]]):
    """-> (unet peft dict, text peft dict, rank, alpha) with one rank and alpha for all layers (exact)."""
    if not layers:
        raise IncompatibleArtifact("LoRA file without layers")
    for (_where, path), parts in layers.items():
        if "A" not in parts or "B" not in parts:
            raise IncompatibleArtifact(f"LoRA layer {path} lacks its down or up matrix")
        if parts["A"].shape[0] != parts["B"].shape[1]:
            raise IncompatibleArtifact(f"LoRA layer {path} has mismatched down/up ranks")
    ranks = {int(p["A"].shape[0]) for p in layers.values()}
    alphas = {float(p["alpha"].float().item()) if "alpha" in p else float(p["A"].shape[0]) for p in layers.values()}
    uniform = len(ranks) == 1 and len(alphas) == 1
    rank = max(ranks)
    alpha = next(iter(alphas)) if uniform else float(rank)
    unet: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    for (where, path), parts in sorted(layers.items()):
        a, b = parts["A"].float(), parts["B"].float()
        if not uniform:
            r = a.shape[0]
            scale = (float(parts["alpha"].float().item()) if "alpha" in parts else r) / r
            b = b * scale  # fold this layer's alpha/rank into B; the artifact's scale is then rank/rank = 1
            if r < rank:  # zero-pad to the common rank: B @ A is unchanged
                a = torch.cat([a, a.new_zeros(rank - r, *a.shape[1:])])
                b = torch.cat([b, b.new_zeros(b.shape[0], rank - r, *b.shape[2:])], dim=1)
        target = unet if where == "unet" else text
        target[f"{path}.lora_A.weight"] = a.contiguous()
        target[f"{path}.lora_B.weight"] = b.contiguous()
    return unet, text, rank, alpha


def _infer_hidden(unet: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
                  embeddings: torch.Tensor | None) -> int:
    if embeddings is not None:
        return int(embeddings.shape[-1])
    for k, v in unet.items():  # cross-attention keys/values read the text encoder's hidden states
        if ".attn2.to_k.lora_A" in k or ".attn2.to_v.lora_A" in k:
            return int(v.shape[1])
    for k, v in text.items():
        if k.endswith("q_proj.lora_A.weight"):
            return int(v.shape[1])
    return 0  # not visible in the file (no cross-attention or text layers): import_file decides


def _lora_artifact(unet, text, rank, alpha, *, kind, stem, base_model, trigger, source,
                   embeddings=None, tokens=None) -> ConceptArtifact:
    return ConceptArtifact(
        kind=kind, method="imported", base_model=base_model, hidden_size=_infer_hidden(unet, text, embeddings),
        tokens=tokens or [trigger or stem], embeddings=embeddings, unet_lora=unet, text_lora=text,
        rank=int(rank), alpha=float(alpha), steps=0, created=_now(), version=_version(),
        extra={"source_format": source},
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    from kitbooth import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------------
# export


def _baked_lora(sd: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """peft dict with alpha/rank folded into B (so loaders that assume alpha = rank get it right)."""
    return {k: (v * scale if ".lora_B." in k and scale != 1.0 else v) for k, v in sd.items()}


def _fp16(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in d.items()}


def kohya_lora_tensors(art: ConceptArtifact) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    alpha = float(art.alpha if art.alpha is not None else (art.rank or 1))
    for text, sd in ((False, art.unet_lora), (True, art.text_lora)):
        for path, (a, b) in lora_modules(sd).items():
            name = kohya_name(path, text=text)
            out[f"{name}.lora_down.weight"] = a
            out[f"{name}.lora_up.weight"] = b
            out[f"{name}.alpha"] = torch.tensor(alpha)
    return _fp16(out)


def _kohya_metadata(art: ConceptArtifact) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(art.rank or ""),
        "ss_network_alpha": str(art.alpha if art.alpha is not None else ""), "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": art.base_model, "ss_output_name": base_name(art), "kitbooth_kind": art.kind,
        "kitbooth_trigger": art.trigger,
    }


def export(art: ConceptArtifact, fmt: Format, out_dir: str | Path, *, name: str | None = None) -> list[Path]:
    """Write ``art`` in ``fmt`` into ``out_dir``; returns the files written (atomically)."""
    from safetensors.torch import save

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    validate(art)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _safe_stem(name) if name else base_name(art)
    written: list[Path] = []

    def put(filename: str, data: bytes) -> None:
        write_atomic(out / filename, data)
        written.append(out / filename)

    if fmt == "diffusers":
        if art.embeddings is not None:
            put(DIFFUSERS_TI_NAME, save({f"<{stem}>": art.embeddings.to(torch.float16).contiguous()}))
        if art.has_lora:
            _export_diffusers_lora(art, out)
            written.append(out / DIFFUSERS_LORA_NAME)
        return written

    if art.embeddings is not None:
        emb = art.embeddings.detach().to("cpu", torch.float16).contiguous()
        if fmt == "a1111":
            buf = io.BytesIO()
            torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": emb}, "name": stem,
                        "step": int(art.steps), "sd_checkpoint": None, "sd_checkpoint_name": art.base_model}, buf)
            put(f"{stem}.pt", buf.getvalue())
        else:
            put(f"{stem}.safetensors", save({"emb_params": emb}, metadata={"kitbooth_trigger": art.trigger}))
    if art.has_lora:
        put(f"{stem}-lora.safetensors", save(kohya_lora_tensors(art), metadata=_kohya_metadata(art)))
    return written


def _export_diffusers_lora(art: ConceptArtifact, out: Path) -> None:
    """``pytorch_lora_weights.safetensors`` written by diffusers' own ``save_lora_weights``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    scale = art.lora_scale
    unet = convert_state_dict_to_diffusers(_fp16(_baked_lora(art.unet_lora, scale))) if art.unet_lora else None
    text = None
    if art.text_lora:
        converted = convert_state_dict_to_diffusers(_fp16(_baked_lora(art.text_lora, scale)))
        text = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in converted.items()}
    tmp = out / f".{DIFFUSERS_LORA_NAME}.partial"
    tmp.mkdir(exist_ok=True)
    try:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=unet, text_encoder_lora_layers=text)
        (tmp / DIFFUSERS_LORA_NAME).replace(out / DIFFUSERS_LORA_NAME)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
