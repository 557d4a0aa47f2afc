"""Training a hypernetwork: ``training.loop.Trainer`` with a hypernetwork's MLPs as the trainable tensors.

Everything else is the Trainer's, so the worker slices, checkpoints and resumes it like the other methods: the
shared batch source (``training.train_step.BatchSource``: cached VAE latents and mirrors, the caption templates
with the trigger word, uniform timesteps, the face-masked min-SNR-γ loss, every draw from the job's own
generator), the run loop (``run(max_steps=, max_seconds=)``, stop flag, progress, ``on_checkpoint``),
``state_dict()``/``load_state_dict()`` bytes and ``close()``. The structure comes from the ``TrainConfig``
(``method="hypernetwork"``, ``hyper_*`` fields); the sizes are the UNet's cross-attention width. The MLPs are
applied at strength 1 while training (A1111 ignores the multiplier there) through hooks that ``run()`` removes,
so between slices the pipeline is the base model, bit for bit. The text side never trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch

from training.artifact import ConceptArtifact
from training.config import TrainConfig
from training.hypernetwork import Hypernetwork, config_from_train, network_tensors, structure_of
from training.loop import Trainer
from training.train_pipeline import training_mode


class HypernetworkTrainer(Trainer):
    """``Trainer``'s interface for ``config.method == "hypernetwork"``; ``network`` is the ``Hypernetwork``."""

    def __init__(self, pipe, images, config: TrainConfig, *, name: str = "hypernetwork", **kwargs: Any):
        if config.method != "hypernetwork":
            raise ValueError(f"HypernetworkTrainer needs method='hypernetwork', not {config.method!r}")
        # Built before Trainer.__init__, which asks _param_groups() for the optimiser's tensors.
        self.network = Hypernetwork(config_from_train(config, pipe.unet), name=name,
                                    sd_checkpoint_name=kwargs.get("base_model_id") or None,
                                    generator=torch.Generator().manual_seed(config.seed)).to(pipe.unet.device)
        super().__init__(pipe, images, config, **kwargs)

    def run(self, *, max_steps: int | None = None, max_seconds: float | None = None) -> int:
        self.network.step = super().run(max_steps=max_steps, max_seconds=max_seconds)  # A1111's "step" field
        return self.network.step

    def load_state_dict(self, data: bytes) -> None:
        super().load_state_dict(data)
        self.network.step = self.step

    def fixed_batch_loss(self) -> float:
        """The loss on the fixed batch (``overfit_fixed_batch``) without training — for checks."""
        self.data.ensure()
        with torch.no_grad(), self._attached():
            return float(self.data.loss(self.pipe.unet, self.data.sample(),
                                        lambda captions: self._text(captions, text_frozen=True)))

    def artifact(self) -> ConceptArtifact:
        """The hypernetwork trained so far as a KitBooth concept (``method="hypernetwork"``)."""
        art = super().artifact()
        art.hypernetwork = network_tensors(self.network)
        art.hyper_structure = structure_of(self.network.config)
        art.extra = {**art.extra, "init_word": "", "name": self.network.name}
        return art

    def _param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"hyper": list(self.network.parameters())}

    def _named_params(self) -> dict[str, torch.nn.Parameter]:
        return {f"hyper.{k}": v for k, v in self.network.named_parameters()}

    def _attached(self) -> AbstractContextManager[None]:
        return training_mode(self.pipe, self.config, self.device, [self._training(), self.network.applied(
            self.pipe.unet, 1.0)])

    @contextlib.contextmanager
    def _training(self) -> Iterator[None]:
        self.network.train()  # dropout on while training only
        try:
            yield
        finally:
            self.network.eval()
