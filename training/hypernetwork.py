"""Hypernetworks as AUTOMATIC1111's webui defines them (modules/hypernetworks/hypernetwork.py), on a diffusers UNet.

A hypernetwork holds, per context width (768 for SD 1.5's cross-attention; A1111 also offers 320/640/1280, which
hit the self-attention of the blocks of that width), a pair of small MLPs — one for K, one for V. In every
attention layer A1111 transforms the context (the text embedding, or the hidden states themselves in
self-attention) before ``to_k``/``to_v``: ``out = context + mlp(context) * strength``, looking the pair up by the
context's last dimension. We do exactly that with forward pre-hooks on each ``Attention``'s ``to_k`` and ``to_v``:
the input those layers see is the context, whatever attention processor (SDPA, xformers, a LoRA-wrapped layer)
runs the layer, so the processors themselves are never replaced. ``applied()`` installs the hooks and removes
them on exit; nothing else on the UNet is touched, so it is bit-identical afterwards.

The MLP's ``nn.Sequential`` is built layer by layer as A1111 builds it (Linear, activation, LayerNorm, Dropout),
so its ``state_dict`` keys (``linear.0.weight``, ``linear.2.bias``...) index the same positions and A1111 files
load without renaming. Files: see ``training.hypernetwork_files``. As a KitBooth concept (``training.artifact``)
the weights are flat tensors (``network_tensors``) beside A1111's structure fields (``structure_of``), checked
torch-free by ``training.hypernetwork_layout``; the Composer applies them per request row at the concept's weight
(``training.composition.Composition.hyper_hook``, the same transform as ``applied``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kitbooth.errors import IncompatibleArtifact


def _torch_activations() -> dict[str, type[nn.Module]]:
    # A1111 adds every class of torch.nn.modules.activation by lower-cased name; we keep those that build
    # without arguments (the others could not be built by A1111 either).
    out: dict[str, type[nn.Module]] = {}
    for name, cls in inspect.getmembers(nn.modules.activation, inspect.isclass):
        if cls.__module__ == nn.modules.activation.__name__ and issubclass(cls, nn.Module):
            try:
                cls()
            except TypeError:
                continue
            out[name.lower()] = cls
    return out


# A1111's own names, then torch's (A1111 lets torch's override; they agree on every shared name).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, **_torch_activations(),
}
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


def dropout_structure_for(layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's ``parse_dropout_structure``: 0.3 after every hidden layer (the last one only if asked), else 0."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    return [0.0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0.0, 0.0]


@dataclass(frozen=True)
class HypernetworkConfig:
    """The structure of a hypernetwork (what A1111 stores next to the weights). ``sizes``: the context widths it
    has a K/V pair for; ``dropout_structure`` empty means "derive it as A1111 does"."""

    sizes: tuple[int, ...] = (768,)
    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation_func: str = "linear"
    is_layer_norm: bool = False
    weight_initialization: str = "Normal"
    use_dropout: bool = False
    activate_output: bool = False
    last_layer_dropout: bool = False
    dropout_structure: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        ls = self.layer_structure
        if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1 or any(m <= 0 for m in ls):
            raise ValueError("layer_structure must start and end with 1 and be positive, like 1,2,1.")
        if self.activation_func.lower() not in ACTIVATIONS:
            raise ValueError(f"activation_func must be one of {', '.join(sorted(ACTIVATIONS))}.")
        if self.weight_initialization not in WEIGHT_INITS:
            raise ValueError(f"weight_initialization must be one of {', '.join(WEIGHT_INITS)}.")
        if not self.sizes or any(int(s) < 1 for s in self.sizes):
            raise ValueError("sizes must list at least one positive context width.")
        ds = self.dropout_structure
        if ds and (len(ds) != len(ls) or ds[-1] != 0 or any(not 0 <= p < 1 for p in ds)):
            raise ValueError("dropout_structure must match layer_structure, lie in [0, 1) and end with 0.")

    @property
    def dropouts(self) -> tuple[float, ...]:
        if self.dropout_structure:
            return tuple(self.dropout_structure)
        return tuple(dropout_structure_for(self.layer_structure, self.use_dropout, self.last_layer_dropout))

    def replace(self, **overrides) -> HypernetworkConfig:
        return dataclasses.replace(self, **overrides)


class HypernetworkModule(nn.Module):
    """One MLP (K or V) for context width ``dim``; ``forward(x) = x + linear(x) * multiplier``."""

    def __init__(self, dim: int, config: HypernetworkConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.multiplier = 1.0
        ls, drops, act = config.layer_structure, config.dropouts, config.activation_func.lower()
        layers: list[nn.Module] = []
        for i in range(len(ls) - 1):
            width = int(dim * ls[i + 1])
            layers.append(nn.Linear(int(dim * ls[i]), width))
            last = i >= len(ls) - 2
            if act != "linear" and not (last and not config.activate_output):
                layers.append(ACTIVATIONS[act]())
            if config.is_layer_norm:
                layers.append(nn.LayerNorm(width))
            if drops[i + 1] > 0:
                layers.append(nn.Dropout(p=drops[i + 1]))
        self.linear = nn.Sequential(*layers)
        self._initialise(config, generator)

    def _initialise(self, config: HypernetworkConfig, gen: torch.Generator | None) -> None:
        init, act = config.weight_initialization, config.activation_func.lower()
        nonlinearity = "leaky_relu" if act == "leakyrelu" else "relu"
        with torch.no_grad():
            for layer in self.linear:
                if not isinstance(layer, nn.Linear | nn.LayerNorm):
                    continue
                w, b = layer.weight, layer.bias
                if init == "Normal" or isinstance(layer, nn.LayerNorm):  # A1111 inits LayerNorm this way too
                    nn.init.normal_(w, 0.0, 0.01, generator=gen)
                elif init == "XavierUniform":
                    nn.init.xavier_uniform_(w, generator=gen)
                elif init == "XavierNormal":
                    nn.init.xavier_normal_(w, generator=gen)
                elif init == "KaimingUniform":
                    nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity, generator=gen)
                else:
                    nn.init.kaiming_normal_(w, nonlinearity=nonlinearity, generator=gen)
                nn.init.zeros_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) * self.multiplier


class Hypernetwork(nn.Module):
    """A K/V pair of ``HypernetworkModule`` per size in ``config.sizes``, plus A1111's bookkeeping fields."""

    def __init__(self, config: HypernetworkConfig, *, name: str = "hypernetwork", step: int = 0,
                 sd_checkpoint: str | None = None, sd_checkpoint_name: str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.name, self.step = name, step
        self.sd_checkpoint, self.sd_checkpoint_name = sd_checkpoint, sd_checkpoint_name
        self.layers = nn.ModuleDict({
            str(int(size)): nn.ModuleList([HypernetworkModule(int(size), config, generator) for _ in range(2)])
            for size in config.sizes
        })

    def pair(self, size: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        if str(size) not in self.layers:
            return None
        pair = self.layers[str(size)]
        return pair[0], pair[1]

    def module_state_dicts(self) -> dict[int, list[dict[str, torch.Tensor]]]:
        """``{size: [k_state_dict, v_state_dict]}`` as fp32 CPU tensors (A1111's layout)."""
        return {int(s): [{k: v.detach().float().cpu().clone() for k, v in m.state_dict().items()} for m in pair]
                for s, pair in self.layers.items()}

    def transform(self, context: torch.Tensor, which: int, strength: float) -> torch.Tensor:
        """``context`` through the K (``which=0``) or V (1) module of its width; unchanged if there is none."""
        pair = self.pair(int(context.shape[-1]))
        if pair is None or strength == 0:
            return context
        mod = pair[which]
        param = next(mod.parameters())
        x = context.to(param.dtype)  # A1111 runs the MLP in float too (devices.cond_cast_float)
        return (x + mod.linear(x) * strength).to(context.dtype)

    @contextlib.contextmanager
    def applied(self, unet: nn.Module, strength: float = 1.0) -> Iterator[Hypernetwork]:
        """Apply to every attention layer of ``unet`` (diffusers) for the block, at ``strength`` (A1111's
        multiplier). Strength 0 leaves the output exactly the base's. The hooks are removed on exit."""
        handles = []
        try:
            self.to(next(unet.parameters()).device)  # an imported file loads on the CPU
            for module in attention_modules(unet):
                for which, proj in ((0, module.to_k), (1, module.to_v)):
                    if proj is not None:  # (None in added-KV-only attention; SD's UNet has both)
                        handles.append(proj.register_forward_pre_hook(self._hook(which, strength)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, which: int, strength: float):
        def hook(_module: nn.Module, args: tuple):
            if not args or not isinstance(args[0], torch.Tensor):
                return None
            return (self.transform(args[0], which, strength), *args[1:])

        return hook


def attention_modules(unet: nn.Module) -> list[nn.Module]:
    """The UNet's diffusers ``Attention`` layers (attn1 and attn2 of every transformer block)."""
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention)]


def context_sizes(unet: nn.Module) -> tuple[int, ...]:
    """The UNet's cross-attention context width (A1111's default hypernetwork size for that base model)."""
    dim = unet.config.cross_attention_dim
    return (int(dim if isinstance(dim, int) else dim[0]),)


def check_fits(net: Hypernetwork, unet: nn.Module) -> None:
    """Raise ``IncompatibleArtifact`` unless at least one of ``net``'s sizes is a context width of ``unet``'s
    attention layers (an SD 2 hypernetwork, 1024, would otherwise do nothing on SD 1.5, silently)."""
    widths = {int(m.cross_attention_dim) for m in attention_modules(unet)}  # query_dim for attn1
    if not widths & {int(s) for s in net.layers}:
        raise IncompatibleArtifact(
            f"This hypernetwork is for context widths {sorted(int(s) for s in net.layers)}, but this base model "
            f"uses {sorted(widths)}; train or pick one for this base model.")


@contextlib.contextmanager
def apply_hypernetworks(unet: nn.Module, networks: Sequence[tuple[Hypernetwork, float]]) -> Iterator[None]:
    """Several hypernetworks at once (A1111 chains them in order), each at its own strength."""
    with contextlib.ExitStack() as stack:
        for net, strength in networks:
            stack.enter_context(net.applied(unet, strength))
        yield


# --- the concept form (training.artifact): flat tensors + the structure as A1111 names its fields ------------
def config_from_train(config: Any, unet: nn.Module) -> HypernetworkConfig:
    """The structure a ``TrainConfig`` (``hyper_*`` fields) asks for, at ``unet``'s cross-attention width."""
    return HypernetworkConfig(sizes=context_sizes(unet), layer_structure=tuple(config.hyper_layer_structure),
                              activation_func=config.hyper_activation.lower(),
                              is_layer_norm=config.hyper_layer_norm, use_dropout=config.hyper_dropout)


def structure_of(config: HypernetworkConfig) -> dict[str, Any]:
    """A1111's structure fields (what ``training.hypernetwork_layout.read_structure`` reads back)."""
    return {"layer_structure": [float(x) for x in config.layer_structure], "activation_func": config.activation_func,
            "is_layer_norm": config.is_layer_norm, "weight_initialization": config.weight_initialization,
            "use_dropout": config.use_dropout, "activate_output": config.activate_output,
            "last_layer_dropout": config.last_layer_dropout, "dropout_structure": [float(x) for x in config.dropouts]}


def config_of(structure: dict[str, Any], sizes: Sequence[int]) -> HypernetworkConfig:
    s = structure
    return HypernetworkConfig(
        sizes=tuple(int(x) for x in sizes), layer_structure=tuple(float(x) for x in s["layer_structure"]),
        activation_func=str(s["activation_func"]), is_layer_norm=bool(s["is_layer_norm"]),
        weight_initialization=str(s.get("weight_initialization") or "Normal"), use_dropout=bool(s["use_dropout"]),
        activate_output=bool(s["activate_output"]), last_layer_dropout=bool(s["last_layer_dropout"]),
        dropout_structure=tuple(float(x) for x in s["dropout_structure"]))


def network_tensors(net: Hypernetwork) -> dict[str, torch.Tensor]:
    """``{"<size>.<0=k|1=v>.<state_dict key>": fp32 CPU tensor}`` (the ``.safetensors`` twin's keys too)."""
    return {f"{size}.{i}.{k}": v for size, pair in net.module_state_dicts().items()
            for i, sd in enumerate(pair) for k, v in sd.items()}


def network_from(tensors: dict[str, torch.Tensor], structure: dict[str, Any], *, name: str = "hypernetwork",
                 step: int = 0) -> Hypernetwork:
    """The ``Hypernetwork`` of a concept's flat tensors (already validated: ``training.concept_file``)."""
    sizes = sorted({int(k.split(".", 1)[0]) for k in tensors})
    net = Hypernetwork(config_of(structure, sizes), name=name, step=step)
    for size in sizes:
        for which, module in enumerate(net.pair(size) or ()):
            prefix = f"{size}.{which}."
            module.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    return net.eval()
