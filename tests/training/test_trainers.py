"""Trainers on the tiny model (CPU, 64², batch 2): learning, TI isolation, resume, stop flag, restoration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig
from PIL import Image

from tests.training.concepts import load_pipe, synthetic_images
from training.checkpoint import BadCheckpoint
from training.config import TrainConfig, default_config
from training.data import expand_captions, loss_weights, tokenize_caption
from training.loop import Progress, Trainer
from training.pivotal import learning_rates, phase_at

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


@pytest.fixture(scope="module")
def images():
    return synthetic_images()


def _cfg(method: str, **kw) -> TrainConfig:
    base = dict(method=method, resolution=64, batch_size=2, steps=12, checkpoint_every=0)
    base.update(kw)
    return default_config("face", **base)


def _generate(pipe) -> np.ndarray:
    return pipe("a photo of a person in a red shirt", num_inference_steps=3, height=64, width=64,
                generator=torch.Generator().manual_seed(7), output_type="np").images


def test_default_configs():
    face, kit, style = default_config("face"), default_config("kit"), default_config("style")
    assert (face.method, face.resolution, face.num_vectors, face.rank) == ("pivotal", 512, 2, 4)
    assert 400 <= face.steps <= 600 and 0 < face.ti_steps < face.steps
    assert kit.method == style.method == "lora" and not kit.masked_loss
    assert face.tokens == ["<kb-face-0>", "<kb-face-1>"]
    assert default_config("face", steps=None).steps == face.steps  # None overrides are ignored
    assert TrainConfig.from_json(face.to_json()) == face
    with pytest.raises(ValueError):
        default_config("hat")


def test_pivotal_schedule():
    cfg = _cfg("pivotal", steps=10, ti_fraction=0.3)
    assert [phase_at(cfg, s).ti for s in range(10)] == [True] * 3 + [False] * 7
    assert [phase_at(cfg, s).unet for s in range(10)] == [False] * 3 + [True] * 7
    assert learning_rates(cfg, 0)["unet"] == 0 and learning_rates(cfg, 5)["ti"] == 0
    assert phase_at(cfg, 5).text_frozen and not phase_at(cfg, 0).text_frozen


def test_captions_and_placeholders(pipe):
    caps = expand_captions(["{trigger} at the beach", None, "smiling"], 3, ("a photo of {} person",))
    assert caps == [["{} at the beach"], ["a photo of {} person"], ["a photo of {} person, smiling"]]
    tok = tokenize_caption(pipe.tokenizer, "a photo of {} person", trigger_words=None, num_slots=2, stand_in_id=2533)
    assert tok.ids[:7] == [49406, 320, 1125, 539, 2533, 2533, 2533] and tok.ids[7] == 49407
    assert tok.slots[:7] == [-1, -1, -1, -1, 0, 1, -1] and len(tok.ids) == 77
    plain = tokenize_caption(pipe.tokenizer, "a photo of {} person", trigger_words=["sks"], num_slots=0,
                             stand_in_id=0)
    assert plain.ids[:7] == [49406, 320, 1125, 539, 48136, 2533, 49407]  # RECIPES: SD 1.5's exact ids


def test_mask_weights():
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # left half is "face"
    w = loss_weights([mask, None], 8, 0.3, enabled=True)
    assert torch.allclose(w[0, 0, :, :4], torch.ones(8, 4)) and torch.allclose(w[0, 0, :, 4:], torch.full((8, 4), 0.3))
    assert torch.equal(w[1], torch.ones(1, 8, 8))
    assert torch.equal(loss_weights([mask], 8, 0.3, enabled=False), torch.ones(1, 1, 8, 8))


@pytest.mark.parametrize("method", ["ti", "lora", "pivotal"])
def test_loss_falls_overfitting_a_fixed_batch(pipe, images, method):
    # RECIPES: on random weights TI's loss barely moves on fresh noise, so overfit one fixed batch.
    lr_ti = 1e-2
    cfg = _cfg(method, steps=30, overfit_fixed_batch=True, ti_fraction=0.5, lr_unet=1e-2, lr_ti=lr_ti, snr_gamma=None)
    losses: list[float] = []
    with Trainer(pipe, images, cfg, progress=lambda p: losses.append(p.loss)) as t:
        assert t.run() == 30 and t.done
    if method == "ti":
        # a random UNet barely listens to the text: TI's loss falls steadily, but only a little
        assert all(b <= a + 1e-5 for a, b in zip(losses, losses[1:], strict=False)), losses
        assert losses[0] - losses[-1] > 1e-3, losses
    else:
        assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), (method, losses)


def test_ti_changes_only_its_rows(pipe, images):
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    with Trainer(pipe, images, _cfg("ti", steps=8, lr_ti=1e-2)) as t:
        init = t.ti.vectors.detach().clone()
        t.run()
        art = t.artifact()
    # the resident embedding table is untouched; the concept's own rows moved away from the class word
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, table)
    person = table[pipe.tokenizer("person", add_special_tokens=False).input_ids[0]]
    assert torch.allclose(init, person.expand_as(init))
    assert art.embeddings.shape == (2, 32) and not torch.allclose(art.embeddings, init)
    assert (art.embeddings - init).abs().sum(dim=1).min() > 0  # both vectors trained
    assert art.unet_lora == {} and art.rank is None and art.method == "ti"


@pytest.mark.parametrize("method,extra", [("pivotal", {"ti_fraction": 0.5}), ("lora", {"text_lora": True})])
def test_resume_in_new_trainer_equals_uninterrupted(tiny_model_dir, pipe, images, method, extra):
    cfg = _cfg(method, steps=10, **extra)
    with Trainer(pipe, images, cfg) as t:
        t.run()
        full = t.artifact()

    with Trainer(pipe, images, cfg) as t:
        assert t.run(max_steps=3) == 3
        assert t.run(max_steps=1) == 4  # slices continue in the same trainer too
        blob = t.state_dict()
    torch.manual_seed(1234)  # process RNG noise between slices must not matter
    fresh = load_pipe(tiny_model_dir)  # a new worker: freshly loaded pipeline, new Trainer, no photos needed
    with Trainer(fresh, [], cfg) as t:
        t.load_state_dict(blob)
        assert t.step == 4
        assert t.run() == 10
        resumed = t.artifact()
    for a, b in [(full.embeddings, resumed.embeddings)] + [
            (full.unet_lora[k], resumed.unet_lora[k]) for k in full.unet_lora] + [
            (full.text_lora[k], resumed.text_lora[k]) for k in full.text_lora]:
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(v.abs().sum() > 0 for k, v in full.unet_lora.items() if "lora_B" in k)  # LoRA did train


def test_checkpoint_refuses_other_config(pipe, images):
    with Trainer(pipe, images, _cfg("lora", steps=4)) as t:
        blob = t.state_dict()
    with Trainer(pipe, images, _cfg("lora", steps=4, rank=8)) as t, pytest.raises(BadCheckpoint, match="rank"):
        t.load_state_dict(blob)
    with Trainer(pipe, images, _cfg("lora", steps=4)) as t, pytest.raises(BadCheckpoint):
        t.load_state_dict(b"not a checkpoint")


def test_stop_flag_stops_within_one_step(pipe, images):
    seen: list[Progress] = []
    stop = {"now": False}

    def progress(p: Progress) -> None:
        seen.append(p)
        if p.step == 3:
            stop["now"] = True

    with Trainer(pipe, images, _cfg("pivotal", steps=20), progress=progress, should_stop=lambda: stop["now"]) as t:
        assert t.run() == 3
        assert t.stopped and not t.done
    assert [p.step for p in seen] == [1, 2, 3] and seen[-1].total == 20
    assert all(p.eta_seconds >= 0 and np.isfinite(p.loss) for p in seen)


def test_max_seconds_and_checkpoint_callback(pipe, images):
    saved: list[int] = []
    cfg = _cfg("lora", steps=9, checkpoint_every=4)
    with Trainer(pipe, images, cfg, on_checkpoint=lambda step, blob: saved.append(step)) as t:
        assert t.run(max_seconds=0) == 0
        assert t.run() == 9
    assert saved == [4, 8]


def _add_resident_adapter(pipe) -> None:
    """A LoRA the worker keeps resident between jobs (non-zero weights, active)."""
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_v"]),
                          adapter_name="resident")
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B.resident" in name:
                p.copy_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("with_resident_adapter", [False, True])
def test_pipeline_bit_identical_after_training(tiny_model_dir, images, with_resident_adapter):
    pipe = load_pipe(tiny_model_dir)
    if with_resident_adapter:
        base = _generate(pipe)
        _add_resident_adapter(pipe)
    before = _generate(pipe)
    if with_resident_adapter:
        assert not np.array_equal(base, before)  # the resident adapter is live, and must stay so
    modules = {n: type(m) for n, m in pipe.unet.named_modules()}
    te_modules = {n: type(m) for n, m in pipe.text_encoder.named_modules()}
    grads = [p.requires_grad for p in pipe.unet.parameters()]
    vocab = len(pipe.tokenizer)
    attrs = set(vars(pipe.unet)), set(vars(pipe.text_encoder))
    for method, extra in [("ti", {}), ("lora", {"text_lora": True, "gradient_checkpointing": True}),
                          ("pivotal", {"ti_fraction": 0.5})]:
        with Trainer(pipe, images, _cfg(method, steps=4, **extra)) as t:
            t.run(max_steps=2)
            mid = _generate(pipe)  # between slices the resident pipeline is the base model again
            t.run()
        np.testing.assert_array_equal(mid, before)
    np.testing.assert_array_equal(_generate(pipe), before)
    assert {n: type(m) for n, m in pipe.unet.named_modules()} == modules
    assert {n: type(m) for n, m in pipe.text_encoder.named_modules()} == te_modules
    assert [p.requires_grad for p in pipe.unet.parameters()] == grads
    assert len(pipe.tokenizer) == vocab and (set(vars(pipe.unet)), set(vars(pipe.text_encoder))) == attrs
    assert not pipe.unet.training and not pipe.unet.is_gradient_checkpointing
    if with_resident_adapter:
        assert set(pipe.unet.peft_config) == {"resident"}
