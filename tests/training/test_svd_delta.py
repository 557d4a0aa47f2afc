"""The DreamBooth delta as a truncated SVD (tiny model): how well it reproduces the fine-tuned UNet, how small
it is, and that it is a LoRA/LoCon like any other — composed, exported to kohya, validated."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from kitbooth.errors import IncompatibleArtifact
from tests.training.concepts import load_pipe
from tests.training.dreambooth_helpers import merged_unet, probe, rel, trained
from training.artifact import save_artifact
from training.base_layers import TINY, from_pipeline
from training.compose import Composer, ConceptUse
from training.concept_file import read_concept
from training.exports import export
from training.svd_delta import compress

torch.set_num_threads(1)

RANK = 8
# At rank 8 the tiny UNet's layers (32..64 wide) keep a fifth of the full delta's numbers; the merged delta
# then reproduces the fine-tuned UNet's prediction to within 50% of the fine-tuning's own effect on it
# (measured: 0.38 after 12 overfitting steps). Rank 16 is closer still; the full rank is exact.
OUTPUT_TOLERANCE = 0.5
SIZE_RATIO = 0.25


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


@pytest.fixture(scope="module")
def tuned(pipe):
    tr = trained(pipe, steps=12, rank=RANK)
    yield tr
    tr.close()


def test_compress_pads_reshapes_and_measures():
    g = torch.Generator().manual_seed(0)
    deltas = {"lin": torch.randn(6, 5, generator=g), "conv": torch.randn(3, 4, 3, 3, generator=g),
              "zero": torch.zeros(4, 4)}
    lora, rep = compress(deltas, 4)
    assert "zero.lora_A.weight" not in lora and rep.layers == 2
    assert lora["conv.lora_A.weight"].shape == (4, 4, 3, 3) and lora["conv.lora_B.weight"].shape == (3, 4, 1, 1)
    assert torch.all(lora["conv.lora_B.weight"][:, 3:] == 0)  # the conv's delta has rank 3: zero-padded to 4
    b, a = lora["conv.lora_B.weight"].reshape(3, 4), lora["conv.lora_A.weight"].reshape(4, -1)
    assert torch.allclose(b @ a, deltas["conv"].reshape(3, -1), atol=1e-5)  # its full rank: exact
    lin = lora["lin.lora_B.weight"] @ lora["lin.lora_A.weight"]
    want = math.sqrt(float((lin - deltas["lin"]).norm() ** 2) / float(sum(d.norm() ** 2 for d in deltas.values())))
    assert rep.rel_error == pytest.approx(want, rel=1e-4)


def test_delta_reproduces_the_fine_tuned_unet_and_is_far_smaller(pipe, tuned):
    deltas = tuned.deltas()["unet"]
    base, ft = probe(pipe.unet), probe(tuned.unet)
    errors = {}
    for rank in (RANK, 2 * RANK, 64):
        lora, _ = compress(deltas, rank)
        errors[rank] = float((probe(merged_unet(pipe, lora)) - ft).norm() / (ft - base).norm())
    assert errors[RANK] < OUTPUT_TOLERANCE, errors
    assert errors[64] < errors[2 * RANK] < errors[RANK] and errors[64] < 1e-4  # 64 = the tiny model's full rank
    art = tuned.artifact()
    data = save_artifact(art)
    full_delta_bytes = 2 * sum(d.numel() for d in deltas.values())  # the whole delta in fp16
    assert len(data) < SIZE_RATIO * full_delta_bytes, (len(data), full_delta_bytes)
    extra = art.extra
    print(f"rank {RANK}: rel error {extra['delta_rel_error']}, output error {errors[RANK]:.3f}, "
          f"{len(data):,} B vs full delta {full_delta_bytes:,} B")


def test_composes_like_a_lora_and_leaves_the_base_exact(pipe, tuned):
    art = tuned.artifact()
    want = probe(merged_unet(pipe, art.unet_lora))
    base = probe(pipe.unet)
    composer = Composer(pipe, slots=4, lora_cache=2)
    with composer.compose([[ConceptUse("guilds/1/concepts/1.safetensors", art)]]):
        got = probe(pipe.unet)
    assert rel(got, want) < 1e-4 and not torch.allclose(got, base)
    assert torch.equal(probe(pipe.unet), base)
    composer.evict_all()


def test_kohya_locon_export_loads_in_diffusers(pipe, tuned, tiny_model_dir, tmp_path):
    art = tuned.artifact()
    files = export(art, "kohya", tmp_path, name="alice")
    assert [f.name for f in files] == ["alice-kb-face-lora.safetensors"]
    from safetensors.numpy import load_file

    keys = load_file(files[0])
    assert any(k.endswith("conv1.lora_down.weight") and v.ndim == 4 for k, v in keys.items())  # LoCon
    fp16 = {k: v.half().float() for k, v in art.unet_lora.items()}
    other = load_pipe(tiny_model_dir)

    def image(p):
        return p("a photo of ohwx person", num_inference_steps=3, height=64, width=64,
                 generator=torch.Generator().manual_seed(7), output_type="np").images

    before = image(other)
    other.load_lora_weights(str(tmp_path), weight_name=files[0].name)
    assert rel(probe(other.unet), probe(merged_unet(pipe, fp16))) < 1e-3  # every layer loaded, as merged
    assert np.abs(image(other) - before).max() > 1e-3


def test_validator_takes_the_delta_and_refuses_a_wrong_shape(pipe, tuned):
    art = tuned.artifact()
    data = save_artifact(art)
    for base in (TINY, from_pipeline(pipe)):
        cf = read_concept(data, base, kind="face")
        assert cf.own["method"] == "dreambooth" and cf.rank == RANK
        assert json.loads(cf.metadata["extra"])["delta_rank"] == str(RANK)
    conv = next(k for k, v in art.unet_lora.items() if v.dim() == 4 and ".lora_A." in k)
    bad = dataclasses.replace(art, unet_lora={**art.unet_lora, conv: art.unet_lora[conv][:, :-1]})
    with pytest.raises(IncompatibleArtifact, match="different base model"):
        read_concept(save_artifact(bad), TINY, kind="face")


def test_full_delta_keeps_the_kit_exactly(pipe):
    with trained(pipe, steps=3, kind="kit", full_delta=True) as tr:
        art = tr.artifact()
        ft = probe(tr.unet)
    # Every singular value: the rank of the widest layer's delta (the tiny model's 128-wide time embedding).
    assert art.rank == 128 and float(art.extra["delta_rel_error"]) < 1e-5 and art.extra["full_delta"] == "true"
    assert rel(probe(merged_unet(pipe, art.unet_lora)), ft) < 1e-5
