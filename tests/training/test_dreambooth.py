"""DreamBooth on the tiny model (CPU, 64²): learning, prior preservation's shared class images, the untouched
resident pipeline, slices, and the file it writes."""

from __future__ import annotations

import pytest
import torch

from storage import LocalArtifactStore
from tests.training.concepts import load_pipe, synthetic_images
from tests.training.dreambooth_helpers import db_config, trained
from training.artifact import load_artifact, read_metadata, save_artifact
from training.config import INIT_WORDS, default_config
from training.dreambooth import DreamBoothTrainer
from training.trainers import make_trainer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


@pytest.fixture
def store(tmp_path):
    return LocalArtifactStore(tmp_path / "store")


def test_defaults_and_refusals():
    face = default_config("face", method="dreambooth")
    assert (face.lr_unet, face.rank, face.prior_loss_weight, face.num_class_images) == (5e-6, 32, 1.0, 100)
    assert face.gradient_checkpointing and not face.train_text_encoder and face.tokens == ["ohwx"]
    assert default_config("face").lr_unet == 2e-4  # other methods keep theirs
    assert default_config("kit", method="dreambooth", full_delta=True).full_delta
    with pytest.raises(ValueError, match="full_delta"):
        default_config("face", method="dreambooth", full_delta=True)
    with pytest.raises(ValueError, match="full_delta"):
        default_config("kit", method="lora", full_delta=True)


def test_loss_falls_and_resident_pipeline_is_untouched(pipe, store):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    grads = [p.requires_grad for p in pipe.unet.parameters()]
    tr = make_trainer(pipe, synthetic_images(), db_config(steps=12), base_model_id="tiny", store=store)
    assert isinstance(tr, DreamBoothTrainer) and tr.unet.is_gradient_checkpointing and tr.unet is not pipe.unet
    with tr:
        tr.run(max_steps=2)
        first = tr.last_loss
        tr.run()
        assert tr.done and tr.last_loss < 0.5 * first, (first, tr.last_loss)
        changed = sum(not torch.equal(w, pipe.unet.get_submodule(k).weight) for k, w in tr._trained["unet"].items())
        assert changed == len(tr._trained["unet"])  # every Linear/Conv2d weight of the copy trained
    after = pipe.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(text_before[k], v) for k, v in pipe.text_encoder.state_dict().items())
    assert [p.requires_grad for p in pipe.unet.parameters()] == grads


def test_class_images_are_generated_once_and_shared(pipe, store, monkeypatch):
    calls = []
    real = type(pipe).__call__

    def counting(self, *args, **kwargs):
        calls.append(len(args[0]) if args else 1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", counting)
    first = trained(pipe, store, steps=1)
    assert first.class_generated == 2 and sum(calls) == 2
    keys = store.list("")
    assert keys and all(k.startswith("shared/class-images/") for k in keys)  # under no user's prefix
    assert f"a photo of a {INIT_WORDS['face']}" == first.class_set.prompt
    second = trained(pipe, store, steps=1, seed=5)  # another user's training: same base, word, count, size
    assert second.class_generated == 0 and sum(calls) == 2
    assert torch.equal(first.prior.latents, second.prior.latents)
    store.delete(first.class_set.done_key)  # a try that stopped before finishing the set: the images are reused
    again = trained(pipe, store, steps=1)
    assert again.class_generated == 0 and sum(calls) == 2 and store.exists(first.class_set.done_key)
    kit = trained(pipe, store, steps=1, kind="kit")  # another class word: its own set
    assert kit.class_generated == 2 and sum(calls) == 4 and len(store.list("shared/class-images/")) == 6
    for t in (first, second, again, kit):
        t.close()


def test_slices_resume_exactly_and_what_a_checkpoint_costs(pipe, store):
    cfg = db_config(steps=6, overfit_fixed_batch=False)
    with DreamBoothTrainer(pipe, synthetic_images(), cfg, base_model_id="tiny", store=store) as whole:
        whole.run()
        want = {k: w.clone() for k, w in whole._trained["unet"].items()}
    with DreamBoothTrainer(pipe, synthetic_images(), cfg, base_model_id="tiny", store=store) as a:
        a.run(max_steps=3)
        blob = a.state_dict()
    with DreamBoothTrainer(pipe, [], cfg, base_model_id="tiny", store=store) as b:  # no photos: all in the blob
        b.load_state_dict(blob)
        assert b.step == 3
        b.run()
        assert b.class_generated == 0
        assert all(torch.equal(w, want[k]) for k, w in b._trained["unet"].items())
    # A slice's checkpoint: every trained weight (fp32) + AdamW's two moments + the cached latents.
    weights = sum(w.numel() * 4 for w in want.values())
    assert 3 * weights < len(blob) < 3 * weights + 1_000_000, (len(blob), weights)
    print(f"tiny-model checkpoint {len(blob):,} B (trained weights {weights:,} B)")


def test_the_file_says_what_it_is(pipe, store):
    with trained(pipe, store, steps=3, rank=8) as tr:
        data = save_artifact(tr.artifact())
    meta = read_metadata(data)
    extra = __import__("json").loads(meta["extra"])
    assert meta["method"] == "dreambooth" and meta["rank"] == "8" and meta["tokens"] == '["ohwx"]'
    assert extra["delta_rank"] == "8" and 0 < float(extra["delta_rel_error"]) < 1
    assert int(extra["delta_bytes_fp16"]) < int(extra["delta_full_bytes_fp16"]) / 4
    art = load_artifact(data)
    assert art.method == "dreambooth" and any(t.dim() == 4 for t in art.unet_lora.values())  # conv layers too
    assert len(data) < int(extra["delta_bytes_fp16"]) + 100_000


def test_cli_trains_and_inspects_a_dreambooth_file(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from kitbooth.cli import main
    from tests.training.test_cli_train import _args, _kit_photos, _write

    monkeypatch.setenv("KITBOOTH_DATA_DIR", str(tmp_path / "data"))  # the store the class images go to
    for var in ("KITBOOTH_STORE_URL", "KITBOOTH_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)
    photos, out = _write(tmp_path / "kit", _kit_photos()), tmp_path / "kit.safetensors"
    args = _args(photos, out, tiny_model_dir, "--kind", "kit", "--method", "dreambooth", "--steps", "2",
                 "--rank", "4", "--class-images", "2")
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "delta: rank 4 on 83 layers, relative reconstruction error" in text
    assert len(list((tmp_path / "data" / "artifacts" / "shared" / "class-images").rglob("*.png"))) == 2
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "dreambooth" in shown and "truncated SVD rank 4 on 83 layers" in shown and "'shirt'" in shown


def test_text_encoder_option_trains_a_copy_of_it_too(pipe, store):
    from training.base_layers import TINY
    from training.concept_file import read_concept

    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    with trained(pipe, store, steps=2, rank=4, train_text_encoder=True) as tr:
        assert tr.text_encoder is not None and tr.text_encoder is not pipe.text_encoder
        art = tr.artifact()
    assert art.text_lora and "text_delta_rel_error" in art.extra
    assert all(torch.equal(before[k], v) for k, v in pipe.text_encoder.state_dict().items())
    assert read_concept(save_artifact(art), TINY, kind="face").targets == ("text_encoder", "unet")


def test_a_cancel_while_drawing_class_images_stops_before_the_next_batch(pipe, store, monkeypatch):
    from training import dreambooth_prior

    monkeypatch.setattr(dreambooth_prior, "BATCH", 1)  # two batches of one image
    drawn = []
    real = dreambooth_prior.generate
    monkeypatch.setattr(dreambooth_prior, "generate", lambda *a: drawn.append(a[2]) or real(*a))
    stop = []
    tr = DreamBoothTrainer(pipe, synthetic_images(), db_config(steps=2), base_model_id="tiny", store=store,
                           should_stop=lambda: bool(drawn))  # cancelled once the first image is drawn
    assert tr.run() == 0 and tr.stopped and drawn == [0] and not store.exists(tr.class_set.done_key)
    tr.should_stop = lambda: bool(stop)
    assert tr.run() == 2 and drawn == [0, 1] and tr.class_generated == 1  # the next try draws only the rest
    assert store.exists(tr.class_set.done_key)
    tr.close()
