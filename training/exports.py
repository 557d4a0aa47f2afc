"""Export of a concept in the community's formats: diffusers, A1111 and kohya (import: ``training.formats``).

``diffusers`` writes ``learned_embeds.safetensors`` and/or ``pytorch_lora_weights.safetensors`` (loadable by
diffusers' own ``load_textual_inversion`` / ``load_lora_weights``; the LoRA scale alpha/rank is baked into B, so
no alpha metadata is needed); ``a1111`` writes ``<name>.pt`` (string_to_param) and ``<name>-lora.safetensors``
(kohya keys); ``kohya`` writes ``<name>.safetensors`` (emb_params) and ``<name>-lora.safetensors``.
A1111/kohya exports re-import to the same tensors.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Literal

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from safetensors.torch import save

from training.artifact import ConceptArtifact, lora_modules, validate, write_atomic
from training.concept_file import safe_stem
from training.concept_layouts import kohya_name

Format = Literal["diffusers", "a1111", "kohya"]
FORMATS: tuple[str, ...] = ("diffusers", "a1111", "kohya")
DIFFUSERS_TI_NAME = "learned_embeds.safetensors"
DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"


def base_name(art: ConceptArtifact) -> str:
    """A file/trigger stem for exports: ``<kb-face-0>`` -> ``kb-face``."""
    first = art.tokens[0].strip("<>")
    return safe_stem(re.sub(r"-0$", "", first))


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
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    validate(art)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(name) if name else base_name(art)
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
