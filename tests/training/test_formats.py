"""diffusers / A1111 / kohya conversion: diffusers' own loaders accept our exports; A1111/kohya round trips;
foreign base models and unsafe pickles are refused."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from kitbooth.errors import IncompatibleArtifact
from tests.training.concepts import fp16, load_pipe, make_artifact
from training.artifact import lora_modules
from training.base_layers import TINY
from training.formats import (
    DIFFUSERS_LORA_NAME,
    DIFFUSERS_TI_NAME,
    export,
    import_file,
    kohya_name,
    module_path_from_kohya,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


def _generate(pipe, prompt: str) -> np.ndarray:
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(3),
                output_type="np").images


def _apply_with_peft(pipe, art) -> None:
    """Reference: apply the artifact's LoRA with peft directly (alpha and rank as recorded)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    for model, sd in ((pipe.unet, art.unet_lora), (pipe.text_encoder, art.text_lora)):
        if sd:
            targets = sorted(lora_modules(sd))
            inject_adapter_in_model(LoraConfig(r=art.rank, lora_alpha=art.alpha, target_modules=targets), model,
                                    adapter_name="ref")
            assert not set_peft_model_state_dict(model, sd, adapter_name="ref").unexpected_keys


def test_kohya_names_round_trip():
    for path in ["down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0",
                 "mid_block.attentions.0.proj_in", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj"]:
        name = kohya_name(path, text=False)
        assert "." not in name and module_path_from_kohya(name[len("lora_unet_"):]) == path
    name = kohya_name("encoder.layers.11.self_attn.out_proj", text=True)
    assert name == "lora_te_text_model_encoder_layers_11_self_attn_out_proj"
    assert module_path_from_kohya(name[len("lora_te_"):]) == "text_model.encoder.layers.11.self_attn.out_proj"


def test_diffusers_ti_export_loads_in_diffusers(tiny_model_dir, tmp_path):
    pipe = load_pipe(tiny_model_dir)
    art = make_artifact(pipe, method="ti")
    files = export(art, "diffusers", tmp_path)
    assert files == [tmp_path / DIFFUSERS_TI_NAME]
    assert list(load(files[0].read_bytes())) == ["kb-face"]
    before = _generate(pipe, "a photo of kb-face person")
    pipe.load_textual_inversion(files[0])  # diffusers' own loader: "kb-face", "kb-face_1"
    table = pipe.text_encoder.get_input_embeddings().weight
    ids = pipe.tokenizer.convert_tokens_to_ids(["kb-face", "kb-face_1"])
    torch.testing.assert_close(table[ids].detach(), fp16(art.embeddings))
    assert not np.array_equal(_generate(pipe, "a photo of kb-face person"), before)
    # and back: the diffusers file re-imports to the same vectors
    back = import_file(files[0], kind="face", pipe=pipe)
    assert torch.equal(back.embeddings, fp16(art.embeddings)) and back.tokens == ["<kb-face-0>", "<kb-face-1>"]


@pytest.mark.parametrize("text,alpha", [(False, 4.0), (True, 8.0)])
def test_diffusers_lora_export_loads_in_diffusers(tiny_model_dir, tmp_path, text, alpha):
    base = load_pipe(tiny_model_dir)
    art = make_artifact(base, method="lora", text=text, alpha=alpha)
    prompt = "a photo of a zwkit football kit"
    plain = _generate(base, prompt)
    _apply_with_peft(base, art)  # what the concept means (alpha/rank as recorded)
    reference = _generate(base, prompt)
    assert not np.array_equal(reference, plain)

    files = export(art, "diffusers", tmp_path)
    assert files == [tmp_path / DIFFUSERS_LORA_NAME]
    keys = list(load(files[0].read_bytes()))
    assert all(k.startswith(("unet.", "text_encoder.")) for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys) == text
    pipe = load_pipe(tiny_model_dir)
    pipe.load_lora_weights(tmp_path)  # diffusers' own loader
    np.testing.assert_allclose(_generate(pipe, prompt), reference, atol=1e-5)
    with pytest.raises(IncompatibleArtifact, match="face can only be used by the person"):
        import_file(files[0], kind="kit", pipe=pipe)  # the export says it is a face (consent)
    back = import_file(files[0], kind="face", pipe=pipe)
    assert back.rank == 4 and back.method == "imported" and back.extra["source_format"] == "diffusers"
    for mine, theirs in ((art.unet_lora, back.unet_lora), (art.text_lora, back.text_lora)):
        for module, (a, b) in lora_modules(mine).items():
            a2, b2 = lora_modules(theirs)[module]
            delta = art.lora_scale * b @ a
            torch.testing.assert_close(back.lora_scale * b2 @ a2, delta)


@pytest.mark.parametrize("fmt", ["a1111", "kohya"])
@pytest.mark.parametrize("method,text", [("pivotal", False), ("lora", True), ("ti", False)])
def test_a1111_and_kohya_exports_reimport_to_the_same_tensors(pipe, tmp_path, fmt, method, text):
    art = make_artifact(pipe, method=method, text=text, alpha=2.0)
    files = export(art, fmt, tmp_path)
    names = sorted(p.name for p in files)
    emb_name = "kb-face.pt" if fmt == "a1111" else "kb-face.safetensors"
    stem = "kb-face"  # no owner name given (see test_exports for named ones)
    assert names == sorted(([emb_name] if method != "lora" else []) +
                           ([f"{stem}-lora.safetensors"] if method != "ti" else []))
    emb = lora = None
    for f in files:
        back = import_file(f, kind="face", pipe=pipe)
        if back.embeddings is not None:
            emb = back
        else:
            lora = back
    if art.embeddings is not None:
        assert emb.tokens == art.tokens and torch.equal(emb.embeddings, fp16(art.embeddings))
        assert emb.extra["source_format"] == ("a1111" if fmt == "a1111" else "kohya")
    if art.has_lora:
        assert (lora.rank, lora.alpha) == (art.rank, art.alpha)
        assert set(lora.unet_lora) == set(art.unet_lora) and set(lora.text_lora) == set(art.text_lora)
        for mine, theirs in ((art.unet_lora, lora.unet_lora), (art.text_lora, lora.text_lora)):
            assert all(torch.equal(theirs[k], fp16(v)) for k, v in mine.items())
    if fmt == "a1111" and art.embeddings is not None:  # a real A1111 .pt, loadable without unpickling objects
        pt = torch.load(tmp_path / "kb-face.pt", weights_only=True)
        assert pt["string_to_param"]["*"].shape == (2, 32)


def test_kohya_mixed_ranks_and_alphas_are_normalised_exactly(pipe):
    g = torch.Generator().manual_seed(1)
    p1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    p2 = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0"
    a1, b1 = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    a2, b2 = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)
    tensors = {}
    for path, a, b, alpha in ((p1, a1, b1, 1.0), (p2, a2, b2, 2.0)):
        name = kohya_name(path, text=False)
        tensors.update({f"{name}.lora_down.weight": a, f"{name}.lora_up.weight": b,
                        f"{name}.alpha": torch.tensor(alpha)})
    art = import_file(save(tensors), "civitai_kit.safetensors", kind="kit", pipe=pipe)
    assert art.rank == 4 and art.tokens == ["civitai_kit"]
    got = lora_modules(art.unet_lora)
    torch.testing.assert_close(art.lora_scale * got[p1][1] @ got[p1][0], (1.0 / 4) * b1 @ a1)
    torch.testing.assert_close(art.lora_scale * got[p2][1] @ got[p2][0], (2.0 / 2) * b2 @ a2)


def test_other_base_models_are_refused(pipe):
    sd2_embedding = save({"emb_params": torch.zeros(2, 1024)})
    with pytest.raises(IncompatibleArtifact, match=r"different base model \(Stable Diffusion 2.x\?\)"):
        import_file(sd2_embedding, "sd2.safetensors", kind="style")  # against SD 1.5, the default
    with pytest.raises(IncompatibleArtifact, match="different base model"):
        import_file(sd2_embedding, "sd2.safetensors", kind="style", pipe=pipe)
    with pytest.raises(IncompatibleArtifact, match="SDXL"):
        import_file(save({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}), "x.safetensors",
                    kind="style")
    sdxl_lora = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 640),
                 "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(640, 4)}
    with pytest.raises(IncompatibleArtifact, match="SDXL"):
        import_file(save(sdxl_lora), "x.safetensors", kind="kit")
    # an SD 1.5 LoRA for a UNet layer the loaded model does not have: fine for SD 1.5, refused against that model
    name = kohya_name("down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q", text=False)
    full = save({f"{name}.lora_down.weight": torch.zeros(4, 1280), f"{name}.lora_up.weight": torch.zeros(1280, 4)})
    assert import_file(full, "sd15.safetensors", kind="kit").hidden_size == 768
    with pytest.raises(IncompatibleArtifact, match="is not a UNet layer of"):
        import_file(full, "sd15.safetensors", kind="kit", pipe=pipe)
    with pytest.raises(IncompatibleArtifact, match="LyCORIS"):
        import_file(save({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}), "loha.safetensors", kind="kit")
    with pytest.raises(IncompatibleArtifact, match="not a valid `.safetensors` file"):
        import_file(b"GIF89a not a model", "x.pt", kind="kit")


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_pt_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "name": "evil", "x": _Evil(str(marker))}, buf)
    with pytest.raises(IncompatibleArtifact, match="unsafe pickle"):
        import_file(buf.getvalue(), "evil.pt", kind="style")
    raw = pickle.dumps({"string_to_param": {"*": _Evil(str(marker))}}, protocol=2)
    with pytest.raises(IncompatibleArtifact):
        import_file(raw, "evil.pt", kind="style")
    assert not marker.exists()
    # a plain A1111 .pt (tensors and strings only) is fine
    ok = io.BytesIO()
    torch.save({"string_to_param": {"*": torch.ones(1, 32)}, "name": "MyKit", "step": 10}, ok)
    art = import_file(ok.getvalue(), "whatever.pt", kind="kit", base=TINY)
    assert art.tokens == ["<mykit-0>"] and art.embeddings.shape == (1, 32)
