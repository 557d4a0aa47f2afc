"""Hypernetworks (A1111-compatible) on the tiny model: files, application with a strength, exact removal, training."""

from __future__ import annotations

import argparse
import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from kitbooth.errors import IncompatibleArtifact
from tests.training.concepts import load_pipe, make_artifact, synthetic_images
from training.checkpoint import BadCheckpoint
from training.compose import Composer, ConceptUse
from training.config import default_config
from training.hypernetwork import (
    Hypernetwork,
    HypernetworkConfig,
    apply_hypernetworks,
    check_fits,
    dropout_structure_for,
)
from training.hypernetwork_files import (
    REFUSED,
    load_a1111,
    load_any,
    load_safetensors,
    save_a1111,
    save_safetensors,
)
from training.hypernetwork_train import HypernetworkTrainer
from training.tiny import TINY_HIDDEN

torch.set_num_threads(1)
DIM = TINY_HIDDEN  # the tiny UNet's cross-attention width (768 on SD 1.5)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


def _generate(pipe) -> np.ndarray:
    return pipe("a photo of a person in a red shirt", num_inference_steps=3, height=64, width=64,
                generator=torch.Generator().manual_seed(7), output_type="np").images


def _net(seed: int = 0, **kw) -> Hypernetwork:
    cfg = HypernetworkConfig(**{"sizes": (DIM,), "layer_structure": (1, 2, 1), "activation_func": "relu",
                                "weight_initialization": "XavierUniform", **kw})
    return Hypernetwork(cfg, name="kit", step=7, generator=torch.Generator().manual_seed(seed)).eval()


def _snapshot(pipe) -> tuple[dict[str, torch.Tensor], dict[str, object], dict[str, type], int]:
    params = {f"{m}.{k}": v.detach().clone() for m in ("unet", "text_encoder", "vae")
              for k, v in getattr(pipe, m).state_dict().items()}
    procs = pipe.unet.attn_processors
    hooks = sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in pipe.unet.modules())
    return params, dict(procs), {k: type(v) for k, v in procs.items()}, hooks


def _assert_same(before, after) -> None:
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(before[1][k] is after[1][k] for k in before[1]) and before[2] == after[2]
    assert before[3] == after[3]


def _a1111_sequential(dim: int) -> nn.Sequential:
    # What A1111's HypernetworkModule builds for layer_structure [1, 2, 2, 1], relu, layer norm, dropout
    # (dropout_structure [0, 0.3, 0, 0]), activate_output False.
    return nn.Sequential(
        nn.Linear(dim, 2 * dim), nn.ReLU(), nn.LayerNorm(2 * dim), nn.Dropout(0.3),
        nn.Linear(2 * dim, 2 * dim), nn.ReLU(), nn.LayerNorm(2 * dim),
        nn.Linear(2 * dim, dim), nn.LayerNorm(dim),
    )


def _a1111_file(dim: int, seed: int = 3) -> tuple[bytes, list[nn.Sequential]]:
    """A file written the way A1111's ``Hypernetwork.save`` writes it (tuples of OrderedDict state_dicts)."""
    torch.manual_seed(seed)
    seqs = [_a1111_sequential(dim) for _ in range(2)]
    for s in seqs:
        for layer in s:
            if isinstance(layer, nn.LayerNorm):  # non-trivial norms, so a mix-up would show
                nn.init.normal_(layer.weight, 1.0, 0.2)
                nn.init.normal_(layer.bias, 0.0, 0.2)
    sd = {dim: tuple(OrderedDict(("linear." + k, v) for k, v in s.state_dict().items()) for s in seqs)}
    sd.update({"step": 1200, "name": "a1111net", "layer_structure": [1, 2, 2, 1], "activation_func": "relu",
               "is_layer_norm": True, "weight_initialization": "Normal", "sd_checkpoint": "e1441589a6",
               "sd_checkpoint_name": "v1-5-pruned-emaonly", "activate_output": False, "use_dropout": True,
               "dropout_structure": [0, 0.3, 0, 0], "last_layer_dropout": False, "optional_info": None})
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue(), [s.eval() for s in seqs]


def test_config_and_dropout_structure():
    assert dropout_structure_for([1, 2, 1], True, False) == [0, 0, 0]
    assert dropout_structure_for([1, 2, 2, 1], True, False) == [0, 0.3, 0, 0]
    assert dropout_structure_for([1, 2, 2, 1], True, True) == [0, 0.3, 0.3, 0]
    net = _net(layer_structure=(1, 2, 2, 1), is_layer_norm=True, use_dropout=True)
    kinds = [type(m).__name__ for m in net.pair(DIM)[0].linear]
    assert kinds == ["Linear", "ReLU", "LayerNorm", "Dropout", "Linear", "ReLU", "LayerNorm", "Linear", "LayerNorm"]
    for bad in (dict(layer_structure=(2, 1)), dict(activation_func="wiggle"), dict(weight_initialization="Zero"),
                dict(dropout_structure=(0, 0.5)), dict(sizes=())):
        with pytest.raises(ValueError):
            HypernetworkConfig(**bad)


def test_a1111_file_imports_with_its_outputs():
    data, seqs = _a1111_file(DIM)
    net = load_a1111(data)
    assert (net.name, net.step, net.sd_checkpoint, net.sd_checkpoint_name) == (
        "a1111net", 1200, "e1441589a6", "v1-5-pruned-emaonly")
    assert net.config.layer_structure == (1, 2, 2, 1) and net.config.is_layer_norm and net.config.dropouts[1] == 0.3
    x = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for which in (0, 1):
            want = x + seqs[which](x) * 0.6  # A1111: context + linear(context) * multiplier
            assert torch.allclose(net.transform(x, which, 0.6), want, atol=1e-6)
        assert torch.equal(net.transform(x, 0, 0.0), x)
        assert torch.equal(net.transform(torch.ones(1, 2, 7), 0, 1.0), torch.ones(1, 2, 7))  # no layer for 7


def test_a1111_round_trip_is_weights_only_loadable(tmp_path):
    net = _net(layer_structure=(1, 1.5, 1), is_layer_norm=True, activation_func="swish")
    path = tmp_path / "kit.pt"
    save_a1111(net, path)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw[DIM], list) and sorted(raw[DIM][0]) == sorted(net.pair(DIM)[0].state_dict())
    assert raw["layer_structure"] == [1.0, 1.5, 1.0] and raw["activation_func"] == "swish"
    back = load_a1111(path)
    assert back.config == net.config.replace(dropout_structure=(0.0, 0.0, 0.0))
    assert (back.name, back.step) == ("kit", 7)
    for (_, a), (_, b) in zip(net.module_state_dicts()[DIM][1].items(), back.module_state_dicts()[DIM][1].items(),
                              strict=True):
        assert torch.equal(a, b)
    assert load_any(path.read_bytes()).config == back.config


def test_unexpected_pickle_global_is_refused():
    state = torch.load(io.BytesIO(_a1111_file(DIM)[0]), weights_only=True)
    state["optional_info"] = argparse.Namespace(evil=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    with pytest.raises(IncompatibleArtifact) as err:
        load_a1111(buf.getvalue())
    assert str(err.value) == REFUSED
    with pytest.raises(IncompatibleArtifact):
        load_a1111(b"not a torch file")
    bad = torch.load(io.BytesIO(_a1111_file(DIM)[0]), weights_only=True)
    bad[DIM] = (bad[DIM][0], {"linear.0.weight": torch.zeros(3, 3)})
    buf = io.BytesIO()
    torch.save(bad, buf)
    with pytest.raises(IncompatibleArtifact, match="do not match"):
        load_a1111(buf.getvalue())


def test_safetensors_round_trip(tmp_path):
    net = _net(seed=4, is_layer_norm=True, use_dropout=True, last_layer_dropout=True)
    path = tmp_path / "kit.safetensors"
    save_safetensors(net, path)
    back = load_safetensors(path)
    assert back.config == net.config.replace(dropout_structure=net.config.dropouts) and back.name == "kit"
    assert back.config.dropouts == (0.0, 0.3, 0.0)
    for pa, pb in zip(net.module_state_dicts()[DIM], back.module_state_dicts()[DIM], strict=True):
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert load_any(path).step == 7
    with pytest.raises(IncompatibleArtifact):
        load_safetensors(b"\x00" * 16)


def test_apply_with_strength_and_exact_removal(pipe):
    net = load_a1111(_a1111_file(DIM)[0])
    before = _snapshot(pipe)
    base = _generate(pipe)
    with net.applied(pipe.unet, 0.0):
        zero = _generate(pipe)
    with net.applied(pipe.unet, 1.0):
        full = _generate(pipe)
    with apply_hypernetworks(pipe.unet, [(net, 0.5), (_net(seed=1), 1.0)]):
        chained = _generate(pipe)
    with pytest.raises(RuntimeError), net.applied(pipe.unet, 1.0):
        raise RuntimeError("a failed generation")
    after = _generate(pipe)
    assert np.array_equal(zero, base)  # strength 0 is the base exactly
    assert np.abs(full - base).max() > 1e-3 and np.abs(chained - full).max() > 1e-3
    assert np.array_equal(after, base)  # removal (even after an error) leaves the base bit-identical
    _assert_same(before, _snapshot(pipe))


def test_training_changes_only_the_hypernetwork_and_lowers_loss(pipe):
    cfg = default_config("face", method="hypernetwork", resolution=64, batch_size=2, steps=10, checkpoint_every=0,
                         overfit_fixed_batch=True, snr_gamma=None, hyper_activation="relu", lr_hyper=3e-3)
    before = _snapshot(pipe)
    base = _generate(pipe)
    trainer = HypernetworkTrainer(pipe, synthetic_images(), cfg)
    start = [p.detach().clone() for p in trainer.network.parameters()]
    first = trainer.fixed_batch_loss()
    assert trainer.run(max_steps=4) == 4 and not trainer.done
    assert np.array_equal(_generate(pipe), base)  # between slices the pipeline is the base
    assert trainer.run() == 10 and trainer.done
    last = trainer.fixed_batch_loss()
    assert last < 0.99 * first, (first, last)  # 0.675 -> 0.656 here
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.network.parameters(), strict=True))
    _assert_same(before, _snapshot(pipe))
    assert np.array_equal(_generate(pipe), base)
    back = load_a1111(save_a1111(trainer.network))
    assert back.step == 10
    with back.applied(pipe.unet, 1.0):
        assert not np.array_equal(_generate(pipe), base)


def test_composes_with_resident_lora_and_leaves_it_as_it_was(tiny_model_dir):
    pipe = load_pipe(tiny_model_dir)  # its own pipeline: the composer adds slot tokens and resident adapters
    composer = Composer(pipe, slots=4, lora_cache=2)
    kit = make_artifact(pipe, method="lora", kind="kit")
    net = load_a1111(_a1111_file(DIM)[0])
    base = _generate(pipe)
    with composer.compose([[ConceptUse("kits/a", kit)]]):
        lora_only = _generate(pipe)
        with net.applied(pipe.unet, 0.8):
            both = _generate(pipe)
        again = _generate(pipe)
    assert not np.array_equal(lora_only, base) and np.abs(both - lora_only).max() > 1e-3
    assert np.array_equal(again, lora_only)  # the LoRA-wrapped to_k/to_v are as they were
    assert np.array_equal(_generate(pipe), base)


def test_resume_in_a_new_trainer_matches_an_uninterrupted_one(pipe):
    cfg = default_config("face", method="hypernetwork", resolution=64, batch_size=2, steps=6, checkpoint_every=0,
                         hyper_activation="relu", hyper_dropout=True, hyper_layer_structure=(1, 2, 2, 1),
                         lr_hyper=1e-3)
    straight = HypernetworkTrainer(pipe, synthetic_images(), cfg)
    assert straight.network.config.dropouts == (0.0, 0.3, 0.0, 0.0)
    straight.run(max_steps=3)
    saved = straight.state_dict()
    straight.run()
    resumed = HypernetworkTrainer(pipe, [], cfg)
    resumed.load_state_dict(saved)
    assert resumed.step == 3 and resumed.run() == 6
    for a, b in zip(straight.network.parameters(), resumed.network.parameters(), strict=True):
        assert torch.equal(a, b)
    other = HypernetworkTrainer(pipe, [], cfg.replace(hyper_activation="tanh"))
    with pytest.raises(BadCheckpoint):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match="no training images"):
        other.run()


def test_check_fits_refuses_another_base_models_widths(pipe):
    check_fits(_net(), pipe.unet)
    sd2 = Hypernetwork(HypernetworkConfig(sizes=(1024,)))
    with pytest.raises(IncompatibleArtifact, match=r"widths \[1024\]"):
        check_fits(sd2, pipe.unet)


def test_oldest_a1111_files_with_only_weights_load_with_a1111_defaults():
    g = torch.Generator().manual_seed(5)
    pair = [{"linear1.weight": torch.randn(2 * DIM, DIM, generator=g), "linear1.bias": torch.randn(2 * DIM, generator=g),
             "linear2.weight": torch.randn(DIM, 2 * DIM, generator=g), "linear2.bias": torch.randn(DIM, generator=g)}
            for _ in range(2)]
    buf = io.BytesIO()
    torch.save({DIM: pair}, buf)  # the first hypernetworks: two Linear layers, no metadata
    net = load_a1111(buf.getvalue())
    assert net.config.layer_structure == (1, 2, 1) and net.config.activation_func == "linear"
    x = torch.randn(1, 3, DIM, generator=g)
    v = pair[1]
    want = x + ((x @ v["linear1.weight"].T + v["linear1.bias"]) @ v["linear2.weight"].T + v["linear2.bias"])
    with torch.no_grad():
        assert torch.allclose(net.transform(x, 1, 1.0), want, atol=1e-4)
