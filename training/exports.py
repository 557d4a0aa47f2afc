"""Export of a concept in the community's formats: diffusers, A1111 and kohya (import: ``training.formats``).

Every file is named after its owner: ``name`` (e.g. the member's display name) becomes the stem
``<name>-kb-<kind>`` (``alice-kb-face``), and that stem is the embedding's trigger everywhere — A1111 and
ComfyUI take an embedding's trigger from its file name, diffusers from the token we write, and the metadata's
``kitbooth_trigger`` says the same. A pure LoRA keeps the word it was trained with (``ohwx`` / ``zwkit``).

==========  ====================================================================================================
diffusers   ``learned_embeds.safetensors`` ({stem: vectors}, for ``load_textual_inversion``) and/or
            ``pytorch_lora_weights.safetensors`` (written by diffusers' ``save_lora_weights``; alpha/rank baked
            into B, so no alpha metadata is needed)
a1111       ``<stem>.pt``: the classic ``string_to_param`` embedding in a zip holding only the entries A1111's
            restricted loader allows (``archive/data.pkl``, ``archive/data/N``, ``archive/version``; torch's
            newer ``byteorder`` and ``.data/serialization_id`` entries are dropped), plus
            ``<stem>-lora.safetensors`` (kohya keys, which A1111 reads)
kohya       ``<stem>.safetensors`` (``emb_params``: A1111, ComfyUI and kohya read it) and
            ``<stem>-lora.safetensors``
==========  ====================================================================================================

A hypernetwork concept has no embedding or LoRA: ``a1111`` writes ``<stem>.pt`` in A1111's own hypernetwork layout
(``training.hypernetwork_files``, the same zip allow-list), ``kohya`` and ``diffusers`` its ``.safetensors`` twin
(``<stem>-hypernetwork.safetensors``); both say ``kitbooth_kind`` and re-import as they were.

==========  ====================================================================================================
==========  ====================================================================================================

Files are written atomically and readable by other local users (0644). Shared metadata never holds a server
path: the base model is its hub id or the base name of its file or folder (``public_base_model``). Every
export says ``kitbooth_kind``, so a face stays recognisable as one however the file is renamed
(``training.concept_file.face_marks``). A1111/kohya exports re-import to the same tensors.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
import zipfile
from pathlib import Path
from typing import Literal

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from safetensors.torch import load, save

from training.artifact import ConceptArtifact, lora_modules, read_metadata, validate, write_atomic
from training.concept_file import safe_stem
from training.concept_layouts import kohya_name
from training.hypernetwork import network_from
from training.hypernetwork_files import save_a1111, save_safetensors

Format = Literal["diffusers", "a1111", "kohya"]
FORMATS: tuple[str, ...] = ("diffusers", "a1111", "kohya")
DIFFUSERS_TI_NAME = "learned_embeds.safetensors"
DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"
FILE_MODE = 0o644
# A1111's modules/safe.py: the only zip entries its loader accepts in a .pt.
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_name(art: ConceptArtifact) -> str:
    """The concept's own stem: ``<kb-face-0>`` -> ``kb-face``; a LoRA's trigger word as it is."""
    first = art.tokens[0].strip("<>")
    return safe_stem(re.sub(r"-0$", "", first))


def export_stem(art: ConceptArtifact, name: str | None) -> str:
    """``alice-kb-face``: the owner's name (sanitised) and the concept's kind; ``kb-face`` without a name."""
    tag = f"kb-{art.kind}"
    folded = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode()  # "Zoë" -> "Zoe"
    owner = safe_stem(folded) if folded.strip() else ""
    owner = "" if owner == "concept" else owner  # safe_stem's fallback for a name with no usable letters
    return f"{owner[:32]}-{tag}" if owner else tag


def export_trigger(art: ConceptArtifact, name: str | None) -> str:
    """What a prompt must contain to use the exported files: the embedding's stem, else the LoRA's word."""
    return export_stem(art, name) if art.embeddings is not None else art.trigger


def public_base_model(ref: str) -> str:
    """A base-model reference fit for shared metadata: a hub id as it is, a local path by its last part."""
    r = (ref or "").strip()
    if r and not os.path.exists(r) and _HUB_ID.match(r.replace("\\", "/")) and not r.startswith((".", "~")):
        return r
    return re.split(r"[\\/]", r.rstrip("\\/"))[-1] if r else ""


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


def _kohya_metadata(art: ConceptArtifact, stem: str, trigger: str) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(art.rank or ""),
        "ss_network_alpha": str(art.alpha if art.alpha is not None else ""), "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": public_base_model(art.base_model), "ss_output_name": f"{stem}-lora",
        "kitbooth_kind": art.kind, "kitbooth_trigger": trigger,
    }


def a1111_pt(emb: torch.Tensor, *, stem: str, steps: int, base_model: str, kind: str) -> bytes:
    """The classic A1111 embedding, in a zip that passes A1111's own allow-list (see the module doc)."""
    buf = io.BytesIO()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": emb}, "name": stem, "step": int(steps),
                "sd_checkpoint": None, "sd_checkpoint_name": public_base_model(base_model),
                "kitbooth_kind": kind}, buf, _use_new_zipfile_serialization=True)
    return a1111_zip(buf.getvalue())


def a1111_zip(data: bytes) -> bytes:
    """A ``torch.save`` zip keeping only the entries A1111's restricted loader allows."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if A1111_ZIP_NAMES.match(info.filename):
                dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def export(art: ConceptArtifact, fmt: Format, out_dir: str | Path, *, name: str | None = None) -> list[Path]:
    """Write ``art`` in ``fmt`` into ``out_dir``, named after ``name`` (the owner); returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    validate(art)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem, trigger = export_stem(art, name), export_trigger(art, name)
    written: list[Path] = []

    def put(filename: str, data: bytes) -> None:
        write_atomic(out / filename, data, mode=FILE_MODE)
        written.append(out / filename)

    if art.hypernetwork:
        net = network_from(art.hypernetwork, art.hyper_structure or {}, name=stem, step=art.steps)
        net.sd_checkpoint_name = public_base_model(art.base_model) or None
        extra = {"kitbooth_kind": art.kind, "kitbooth_trigger": trigger}
        if fmt == "a1111":
            put(f"{stem}.pt", a1111_zip(save_a1111(net, extra=extra)))
        else:
            put(f"{stem}-hypernetwork.safetensors", save_safetensors(net, extra=extra))

    if fmt == "diffusers":
        if art.embeddings is not None:
            put(DIFFUSERS_TI_NAME, save({stem: art.embeddings.to(torch.float16).contiguous()},
                                        metadata={"kitbooth_kind": art.kind, "kitbooth_trigger": trigger}))
        if art.has_lora:
            _export_diffusers_lora(art, out, trigger)
            written.append(out / DIFFUSERS_LORA_NAME)
        return written

    if art.embeddings is not None:
        emb = art.embeddings.detach().to("cpu", torch.float16).contiguous()
        if fmt == "a1111":
            put(f"{stem}.pt", a1111_pt(emb, stem=stem, steps=art.steps, base_model=art.base_model, kind=art.kind))
        else:
            put(f"{stem}.safetensors", save({"emb_params": emb}, metadata={
                "kitbooth_kind": art.kind, "kitbooth_trigger": trigger, "name": stem}))
    if art.has_lora:
        put(f"{stem}-lora.safetensors", save(kohya_lora_tensors(art), metadata=_kohya_metadata(art, stem, trigger)))
    return written


def _export_diffusers_lora(art: ConceptArtifact, out: Path, trigger: str) -> None:
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
        data = (tmp / DIFFUSERS_LORA_NAME).read_bytes()  # + our kind, so a renamed face LoRA still says face
        meta = {**read_metadata(data), "kitbooth_kind": art.kind, "kitbooth_trigger": trigger}
        write_atomic(out / DIFFUSERS_LORA_NAME, save(load(data), metadata=meta), mode=FILE_MODE)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
