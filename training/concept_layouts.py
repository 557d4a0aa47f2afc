"""Which layout a concept file is, and what each of its tensors is called in the base model. Torch-free.

``parse_layout`` only sorts tensors by name (embedding, LoRA down/up/alpha per layer, in base-model paths);
``training.concept_file`` checks their values and shapes. Every name it does not know is refused, so nothing
in a file is silently ignored. Kohya names flatten ``.`` to ``_``; they are mapped back through the base
model's own layer table (exact), or through the list of SD 1.5 compound names when there is no table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from kitbooth.errors import IncompatibleArtifact
from training.base_layers import BaseModel
from training.hypernetwork_layout import twin_fields
from training.safetensors_file import safe_name

KOHYA_UNET, KOHYA_TE = "lora_unet_", "lora_te_"
_WRONG = ("This file was made for a different base model ({guess}) — KitBooth uses {base}; look for a version of it "
          "made for {base}.")
_SDXL_HINTS = ("input_blocks", "output_blocks", "middle_block", "lora_te1_", "lora_te2_", "text_encoder_2",
               "conditioner.embedders", "add_embedding", "text_model_2")
_SD3_FLUX_HINTS = ("joint_blocks", "double_blocks", "single_blocks", "lora_transformer_", "context_embedder",
                   "transformer_blocks.0.attn.add_")
_LYCORIS = re.compile(r"(hada_|lokr_|\.oft_|\.diff(_b)?$|dora_scale|lora_mid|\.scale$)")
_BUNDLE = re.compile(r"^bundle_emb\.([^.]+)\.(string_to_param\.\*|emb_params)$")
_KOHYA_PARTS = {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}
_DIFFUSERS_SUFFIXES = [
    (re.compile(r"\.lora\.down\.weight$"), "A"), (re.compile(r"\.lora\.up\.weight$"), "B"),
    (re.compile(r"\.lora_linear_layer\.down\.weight$"), "A"), (re.compile(r"\.lora_linear_layer\.up\.weight$"), "B"),
    (re.compile(r"\.lora_A(\.[^.]+)?\.weight$"), "A"), (re.compile(r"\.lora_B(\.[^.]+)?\.weight$"), "B"),
    (re.compile(r"\.alpha$"), "alpha"),
]
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_OWN_LORA = re.compile(r"^(unet|text_encoder)\.(.+)\.(lora_A|lora_B)\.weight$")

# Module-name parts that contain "_" (kohya flattens "." to "_"; these are put back together) — no-table fallback.
_COMPOUNDS = sorted([
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "proj_in",
    "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
    "linear_1", "linear_2", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "layer_norm1", "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding",
], key=len, reverse=True)


@dataclass
class Parsed:
    layout: str
    source: str
    layers: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)  # (part, path) -> A/B/alpha
    alphas: set[str] = field(default_factory=set)  # tensor keys that are alphas (scalars, may be integers)
    embedding: np.ndarray | None = None
    embedding_name: str | None = None  # the name the file gives its embedding (trigger stem), if any
    embedding_keys: list[str] = field(default_factory=list)
    hyper: dict[str, np.ndarray] = field(default_factory=dict)  # hypernetwork "<size>.<0|1>.<key>" -> weight
    hyper_fields: dict | None = None  # a hypernetwork file's A1111 structure fields (decoded)


def kohya_name(path: str, *, text: bool) -> str:
    """``down_blocks.0...attn1.to_q`` -> ``lora_unet_down_blocks_0_..._attn1_to_q`` (text: ``lora_te_text_model_...``)."""
    if text:
        path = path if path.startswith("text_model.") else "text_model." + path
        return KOHYA_TE + path.replace(".", "_")
    return KOHYA_UNET + path.replace(".", "_")


def module_path_from_kohya(flat: str) -> str:
    """Invert ``kohya_name`` for SD 1.5 UNet / CLIP layer names (prefix already removed), without a table."""
    dotted = flat.replace("_", ".")
    for c in _COMPOUNDS:
        dotted = re.sub(r"(?<![^.])" + re.escape(c.replace("_", ".")) + r"(?![^.])", c, dotted)
    return dotted


def strip_text_model(path: str) -> str:
    return path[len("text_model."):] if path.startswith("text_model.") else path


def _kohya_paths(base: BaseModel | None) -> dict[tuple[str, str], str]:
    """(part, flattened name) -> path, from the base model's table (exact)."""
    out: dict[tuple[str, str], str] = {}
    for part in ("unet", "text"):
        for path in base.layers(part) if base is not None else ():
            out[(part, path.replace(".", "_"))] = path
            if part == "text":
                out[(part, "text_model_" + path.replace(".", "_"))] = path
    return out


def _kohya_path(table: dict[tuple[str, str], str], part: str, flat: str) -> str:
    if (part, flat) in table:
        return table[(part, flat)]
    path = module_path_from_kohya(flat)  # not a layer of the base model: the validator says so by this name
    return strip_text_model(path) if part == "text" else path


def _short(key: str) -> str:
    return safe_name(key)[:80]


def _put(p: Parsed, part: str, path: str, role: str, key: str, arr: np.ndarray) -> None:
    halves = p.layers.setdefault((part, path), {})
    if role in halves:
        raise IncompatibleArtifact(f"LoRA layer `{_short(path)}` appears twice in this file — re-export the LoRA.")
    halves[role] = arr
    if role == "alpha":
        p.alphas.add(key)


def _refuse_other_models(keys: list[str], meta: dict[str, str], base: str) -> None:
    lowered = " ".join(keys).lower()
    # kohya's ss_* and the modelspec metadata name the base model outright when present.
    named = (meta.get("ss_base_model_version", "") + " " + meta.get("modelspec.architecture", "")).lower()
    if "sdxl" in named or "stable-diffusion-xl" in named:
        lowered += " input_blocks"
    if meta.get("ss_v2", "").lower() == "true" or "sd_v2" in named or "stable-diffusion-v2" in named:
        raise IncompatibleArtifact(_WRONG.format(guess="Stable Diffusion 2.x?", base=base))
    if any(h in lowered for h in _SD3_FLUX_HINTS):
        raise IncompatibleArtifact(_WRONG.format(guess="SD 3 / Flux?", base=base))
    if any(h in lowered for h in _SDXL_HINTS) or {"clip_g", "clip_l"} & set(keys):
        raise IncompatibleArtifact(_WRONG.format(guess="SDXL?", base=base))
    odd = next((k for k in keys if _LYCORIS.search(k)), None)
    if odd is not None:
        raise IncompatibleArtifact(f"`{_short(odd)}` is a LyCORIS/LoHa/LoKr/DoRA tensor, which KitBooth does not "
                                   "support — use a plain LoRA or LoCon file.")


def parse_layout(tensors: dict[str, np.ndarray], metadata: dict[str, str], *, own: bool, base: BaseModel | None,
                 base_label: str) -> Parsed:
    keys = list(tensors)
    _refuse_other_models(keys, metadata, base_label)
    if own:
        return _own(tensors)
    fields = twin_fields(metadata)
    if fields is not None:  # an A1111 hypernetwork (.pt, read by training.torch_pickle) or its .safetensors twin
        return Parsed("a1111-hypernetwork", "a1111", hyper=dict(tensors), hyper_fields=fields)
    if any(k.startswith((KOHYA_UNET, KOHYA_TE, "bundle_emb.")) for k in keys):
        return _kohya(tensors, base)
    if any(".lora" in k or "_lora." in k or ".alpha" in k for k in keys):
        return _diffusers(tensors)
    p = Parsed("a1111-ti", "a1111")
    if len(tensors) == 1:
        (key, arr), = tensors.items()
        if key in ("emb_params", "string_to_param.*"):
            p.layout, p.source = ("kohya-ti", "kohya") if key == "emb_params" else ("a1111-ti", "a1111")
        else:
            p.layout, p.source = "diffusers-ti", "diffusers"
            p.embedding_name = key.strip("<>") if key.strip("<>*") else None
        p.embedding, p.embedding_keys = arr, [key]
        return p
    raise IncompatibleArtifact("This file is neither a textual-inversion embedding (one tensor) nor a LoRA KitBooth knows — "
                       "upload an SD 1.5 LoRA or embedding in diffusers, A1111 or kohya format.")


def _own(tensors: dict[str, np.ndarray]) -> Parsed:
    p = Parsed("kitbooth", "kitbooth")
    for key, arr in tensors.items():
        if key == "embeddings":
            p.embedding = arr
            continue
        if key.startswith("hypernetwork."):
            p.hyper[key[len("hypernetwork."):]] = arr
            continue
        m = _OWN_LORA.match(key)
        if m is None:
            raise IncompatibleArtifact(f"This KitBooth concept file has an unexpected tensor `{_short(key)}` — retrain or "
                               "re-export it.")
        part = "unet" if m[1] == "unet" else "text"
        path = strip_text_model(m[2]) if part == "text" else m[2]
        _put(p, part, path, "A" if m[3] == "lora_A" else "B", key, arr)
    return p


def _kohya(tensors: dict[str, np.ndarray], base: BaseModel | None) -> Parsed:
    p = Parsed("kohya-lora", "kohya")
    table = _kohya_paths(base)
    for key, arr in tensors.items():
        bundle = _BUNDLE.match(key)
        if bundle:
            if p.embedding is not None:
                raise IncompatibleArtifact("This LoRA bundles several embeddings; KitBooth takes one per kit or style — "
                                   "keep one and upload it again.")
            p.embedding, p.embedding_name, p.embedding_keys = arr, bundle[1], [key]
            continue
        name, _, suffix = key.partition(".")
        role = _KOHYA_PARTS.get(suffix)
        if name.startswith(KOHYA_UNET):
            part, flat = "unet", name[len(KOHYA_UNET):]
        elif name.startswith(KOHYA_TE):
            part, flat = "text", name[len(KOHYA_TE):]
        else:
            role = None
        if role is None:
            raise IncompatibleArtifact(f"`{_short(key)}` is not a kohya LoRA tensor KitBooth knows — use a plain LoRA "
                               "(lora_down / lora_up / alpha).")
        _put(p, part, _kohya_path(table, part, flat), role, key, arr)
    return p


def _diffusers(tensors: dict[str, np.ndarray]) -> Parsed:
    p = Parsed("diffusers-lora", "diffusers")
    for key, arr in tensors.items():
        if key.startswith("text_encoder."):
            part, rest = "text", key[len("text_encoder."):]
        elif key.startswith("unet."):
            part, rest = "unet", key[len("unet."):]
        elif key.startswith(("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_out.", "time_embedding.")):
            part, rest = "unet", key
        elif key.startswith(("text_model.", "encoder.layers.")):
            part, rest = "text", key
        else:
            raise IncompatibleArtifact(f"`{_short(key)}` is not a UNet or text-encoder LoRA tensor — upload a LoRA made "
                               "for Stable Diffusion 1.5.")
        m = _OLD_PROCESSOR.search(rest)
        if m:
            proj = m.group(1) + (".0" if m.group(1) == "to_out" else "")
            path, role = rest[: m.start()] + "." + proj, "A" if m.group(2) == "down" else "B"
        else:
            found = next(((rest[: mm.start()], r) for rx, r in _DIFFUSERS_SUFFIXES if (mm := rx.search(rest))), None)
            if found is None:
                raise IncompatibleArtifact(f"`{_short(key)}` is not a LoRA tensor KitBooth knows — use a plain LoRA "
                                   "(lora_A / lora_B or lora.down / lora.up).")
            path, role = found
        _put(p, part, strip_text_model(path) if part == "text" else path, role, key, arr)
    return p
