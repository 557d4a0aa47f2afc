"""Torch work of the worker. Every method here runs on the GPU thread (``gpu_worker.gpu.GpuLane``).

The engine owns the resident pipeline and the composer; it adapts ``training/`` (the library) to the jobs:
one batched ``generate`` call for several users' requests, one training slice, an upscale, an export.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitbooth.errors import JobCancelled
from kitbooth.settings import Settings

log = logging.getLogger(__name__)

RECENT_CALLS = 1000  # pipeline call sizes kept in memory


@dataclass
class GenItem:
    """One user's generate request inside a batch."""

    payload: Any  # contract.GeneratePayload
    uses: list[Any]  # [training.compose.ConceptUse]
    request: Any  # training.generate.GenerationRequest (txt2img, or img2img for "vary")
    should_stop: Callable[[], bool] = lambda: False
    on_progress: Callable[[int, int, Any], None] = lambda step, total, preview: None
    pipeline_seconds: float = 0.0
    gpu_started: float = 0.0  # epoch seconds when its pipeline call began
    # Likeness levers (training.likeness_levers): every candidate request (empty: just ``request``), the images
    # to keep, the reference identity (a 128-d array) and the face-detail mode; ``likeness`` comes back filled.
    candidates: list[Any] = field(default_factory=list)
    keep: int = 0
    reference: Any = None
    face_detail: str = "off"
    face_use: Any = None
    likeness: list[float | None] = field(default_factory=list)
    instant: Any = None  # the instant face's embedding (training.instant_face): its own pipeline call


@dataclass
class SliceWork:
    """One training slice."""

    payload: Any  # contract.TrainPayload
    images: list[Any]  # PIL face crops
    masks: list[Any] | None
    state: bytes | None  # checkpoint to resume from
    max_steps: int | None
    max_seconds: float | None
    should_stop: Callable[[], bool] = lambda: False
    on_progress: Callable[[Any], None] = lambda p: None
    samples: int = 2
    store: Any = None  # the artifact store (DreamBooth's shared class images)


@dataclass
class SliceResult:
    step: int
    total: int
    done: bool
    state: bytes | None = None  # the checkpoint after this slice (None when done)
    artifact: bytes | None = None  # the finished .safetensors (when done)
    trigger_tokens: list[str] = field(default_factory=list)
    samples: list[bytes] = field(default_factory=list)  # PNGs of the new concept
    seconds: float = 0.0
    steps_run: int = 0


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.pipe: Any = None
        self.composer: Any = None
        self.base_model_id = settings.base_model
        self.upscaler: Any = None
        self.calls: deque[int] = deque(maxlen=RECENT_CALLS)  # requests per recent pipeline call (tests, logs)
        # The seams of the likeness levers (training.rerank, training.face_detail): tests replace them.
        self.describe: Callable[[Any], Any] | None = None  # None: training.faces.face_descriptor
        self.find_face: Callable[[Any], Any] | None = None  # None: training.face_detail.main_face
        # The instant face's seam: image -> 512-d embedding or None; None: insightface (built on first use).
        self.embed_face: Callable[[Any], Any] | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def load(self) -> None:
        from training.compose import Composer

        t0 = time.perf_counter()
        s = self.settings
        self.pipe = _load_pipeline(s)
        self.pipe.set_progress_bar_config(disable=True)  # one log line per job instead of a bar per call
        self.composer = Composer(self.pipe, slots=s.ti_slots, lora_cache=s.lora_cache)
        if s.upscaler_model:  # optional; without it the U buttons fall back to Lanczos
            from training.models import load_upscaler

            self.upscaler = load_upscaler(s.upscaler_model, device=s.device, dtype=s.dtype, offline=s.offline)
        log.info("pipeline %s loaded in %.2fs on %s", s.base_model, time.perf_counter() - t0, self.device)

    @property
    def device(self) -> str:
        return str(getattr(self.pipe, "device", "cpu"))

    def warm_up(self) -> None:
        """One tiny generation so the first user does not pay for lazy initialisation."""
        t0 = time.perf_counter()
        self.pipe(prompt="", num_inference_steps=1, height=64, width=64, guidance_scale=1.0, output_type="latent")
        log.info("warm-up in %.2fs", time.perf_counter() - t0)

    def release(self) -> None:
        self.composer = None
        self.pipe = None
        self.upscaler = None
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass

    # --- concepts -------------------------------------------------------------------------------
    def check(self, uses: list[Any]) -> None:
        """Raise ``IncompatibleArtifact`` when a concept does not fit the resident pipeline (no mutation)."""
        for u in uses:
            self.composer.check(u)

    # --- generate -------------------------------------------------------------------------------
    def generate_batch(self, items: list[GenItem]) -> list[Any]:
        """Run several users' requests in ONE pipeline call. Returns, per item, its list of
        ``GeneratedImage`` or the exception that failed it (other items are unaffected by a bad one)."""
        from training.generate import generate

        results: list[Any] = [None] * len(items)
        ok: list[int] = []
        for i, it in enumerate(items):
            try:
                self.check(it.uses)
                if it.should_stop():
                    raise JobCancelled()
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - handed back to that item's job
                results[i] = exc
        if not ok:
            return results
        live = [items[i] for i in ok]
        flat = [(j, r) for j, it in enumerate(live) for r in (it.candidates or [it.request])]
        first = {j: n for n, (j, _r) in reversed(list(enumerate(flat)))}  # an item's first request

        def request_progress(n: int, step: int, total: int, preview: Any = None) -> None:
            j = flat[n][0]
            if first[j] == n:  # each request sees only its own (first candidates') preview
                live[j].on_progress(step, total, preview)

        t0 = time.perf_counter()
        for it in live:
            it.gpu_started = time.time()
        checker = False if all(it.payload.allow_nsfw for it in live) or not self.settings.safety_checker else None
        if any(it.instant is not None for it in live):
            out, failed = self._instant_calls(live, flat, request_progress, checker)
        else:
            out, failed = generate(
                self.pipe, self.composer, [r for _j, r in flat], request_progress=request_progress,
                preview_every_s=1.0, should_stop=lambda: all(it.should_stop() for it in live),
                safety_checker=checker,
            ), {}
        self.calls.append(len(live))
        for j, i in enumerate(ok):
            it = items[i]
            images = [g for (jj, _r), imgs in zip(flat, out, strict=True) if jj == j for g in imgs]
            if j in failed:
                results[i] = failed[j]
                continue
            results[i] = JobCancelled() if it.should_stop() else self._levers(it, images, checker)
            it.pipeline_seconds = time.perf_counter() - t0
        return results

    def _instant_calls(self, live: list[GenItem], flat: list[tuple[int, Any]], request_progress: Any,
                       checker: Any) -> tuple[list[Any], dict[int, Exception]]:
        """The plain requests in one call, each instant-face item in its own call with the FaceID adapter
        (its embedding conditions every row of that call), the base restored after each."""
        from training.generate import generate
        from training.instant_face import applied, labelled

        calls: dict[int | None, list[int]] = {}
        for n, (j, _r) in enumerate(flat):
            calls.setdefault(j if live[j].instant is not None else None, []).append(n)
        out: list[Any] = [[] for _ in flat]
        failed: dict[int, Exception] = {}
        for j, ns in calls.items():
            def progress(m: int, step: int, total: int, preview: Any = None, ns: list[int] = ns) -> None:
                request_progress(ns[m], step, total, preview)

            mine = [live[flat[n][0]] for n in ns]
            s = self.settings
            scope = contextlib.nullcontext() if j is None else applied(
                self.pipe, s.instant_face_adapter or "", live[j].instant, local_files_only=s.offline)
            try:
                with scope:
                    res = generate(self.pipe, self.composer, [flat[n][1] for n in ns], request_progress=progress,
                                   preview_every_s=1.0, should_stop=lambda mine=mine: all(it.should_stop()
                                                                                          for it in mine),
                                   safety_checker=checker)
            except Exception as exc:  # noqa: BLE001 - an instant call fails only its own item
                if j is None:
                    raise
                log.exception("job %s: instant face failed", live[j].payload.job_id)
                failed[j] = exc
                continue
            for n, imgs in zip(ns, res, strict=True):
                out[n] = imgs if j is None else labelled(imgs)
        return out, failed

    def instant_embedding(self, images: list[Any]) -> bytes:
        """The stored instant-face embedding of a user's training crops (``ValueError``: no face found)."""
        from training.instant_face import encode_embedding, insightface_embedder, mean_embedding

        if self.embed_face is None:
            self.embed_face = insightface_embedder(self.settings.instant_face_embedder,
                                                   gpu=self.device.startswith("cuda"))
        return encode_embedding(mean_embedding(images, self.embed_face))

    def _levers(self, it: GenItem, images: list[Any], checker: Any) -> Any:
        """Best-of-N and the face-detail pass on one item's images (after ``generate`` has returned: the pass
        composes on the resident pipeline itself). A failure of a lever falls back to the plain images."""
        from training.likeness_levers import apply_levers

        keep = it.keep or it.request.count
        if it.reference is None and it.face_detail == "off" and len(images) <= keep:
            return images
        seams = {k: v for k, v in (("describe", self.describe), ("find_face", self.find_face)) if v is not None}
        try:
            res = apply_levers(self.pipe, self.composer, it.request, images, keep=keep, reference=it.reference,
                               face_use=it.face_use, detail=it.face_detail,  # type: ignore[arg-type]
                               safety_checker=False if it.payload.allow_nsfw else checker,
                               should_stop=it.should_stop, **seams)
        except JobCancelled as exc:
            return exc
        except Exception:  # noqa: BLE001 - the member still gets their pictures, unranked
            log.exception("job %s: likeness levers failed; showing the first %d images", it.payload.job_id, keep)
            return images[:keep]
        it.likeness = res.likeness
        return res.images

    def upscale(self, image: Any, prompt: str, seed: int) -> Any:
        from training.generate import upscale

        return upscale(self.pipe, image, prompt=prompt, seed=seed, upscaler=self.upscaler,
                       safety_checker=None if self.settings.safety_checker else False)

    # --- training -------------------------------------------------------------------------------
    def train_config(self, payload: Any) -> Any:
        from training.config import default_config

        overrides: dict[str, Any] = {"method": payload.method, "steps": payload.steps,
                                     "resolution": payload.resolution, "seed": payload.seed}
        if payload.method == "dreambooth":
            overrides.update(num_class_images=self.settings.dreambooth_class_images,
                             class_steps=self.settings.dreambooth_class_steps,
                             full_delta=bool(getattr(payload, "full_delta", False)))
        return default_config(payload.kind, **overrides)

    def train_slice(self, work: SliceWork) -> SliceResult:
        from training.artifact import save_artifact
        from training.trainers import make_trainer

        p = work.payload
        config = self.train_config(p)
        t0 = time.perf_counter()
        trainer = make_trainer(
            self.pipe, work.images, config, masks=work.masks, base_model_id=self.base_model_id,
            progress=work.on_progress, should_stop=work.should_stop, store=work.store,
        )
        try:
            if work.state is not None:
                trainer.load_state_dict(work.state)
            start = trainer.step
            if not trainer.done:
                trainer.run(max_steps=work.max_steps, max_seconds=work.max_seconds)
            if work.should_stop():
                raise JobCancelled()
            total = config.steps
            if not trainer.done:
                return SliceResult(step=trainer.step, total=total, done=False, state=trainer.state_dict(),
                                   seconds=time.perf_counter() - t0, steps_run=trainer.step - start)
            art = trainer.artifact()
            data = save_artifact(art)
            steps_run = trainer.step - start
        finally:
            trainer.close()
        samples = self._samples(art, p, work.samples)
        return SliceResult(step=config.steps, total=config.steps, done=True, artifact=data,
                           trigger_tokens=list(getattr(art, "tokens", [])), samples=samples,
                           seconds=time.perf_counter() - t0, steps_run=steps_run)

    def _samples(self, art: Any, payload: Any, n: int) -> list[bytes]:
        """A few images of the new concept (best effort: a failure here never fails the training)."""
        if n <= 0:
            return []
        try:
            from training.compose import ConceptUse
            from training.generate import GenerationRequest, generate  # noqa: I001

            size = 512 if (payload.resolution or 512) >= 512 else int(payload.resolution)
            req = GenerationRequest(
                prompt=_sample_prompt(payload.kind), concepts=[ConceptUse(payload.artifact_key, art, 1.0)],
                seed=payload.seed, count=n, width=size, height=size,
                steps=self.settings.sample_steps, guidance=7.0, negative_prompt=None, kit_words=None,
                style_words=None,
            )
            out = generate(self.pipe, self.composer, [req])
            return [g.png for g in out[0]]
        except Exception:  # noqa: BLE001
            log.exception("sample images failed for concept %s", payload.concept_id)
            return []

    # --- export ---------------------------------------------------------------------------------
    def export(self, data: bytes, formats: list[str], out_dir: Path, name: str = "") -> tuple[list[Path], str]:
        """The files (named after ``name``, the owner) and the trigger a prompt uses with them."""
        from training.artifact import load_artifact
        from training.exports import export_trigger
        from training.formats import export  # noqa: I001

        art = load_artifact(data)
        files: list[Path] = []
        for fmt in formats:  # checked by gpu_worker.validation.validate_export
            files += export(art, fmt, out_dir / fmt, name=name)
        return files, export_trigger(art, name)


def _sample_prompt(kind: str) -> str:
    """The scene of the samples posted after training; the template adds the concept's trigger itself."""
    return {"face": "portrait, smiling, close-up",
            "kit": "standing on the pitch of a football stadium",
            "style": "a football stadium"}.get(kind, "")


def _load_pipeline(s: Settings) -> Any:
    from training.models import load_base_pipeline

    checker = (s.safety_checker_model or True) if s.safety_checker else False
    return load_base_pipeline(s.base_model, device=s.device, dtype=s.dtype, offline=s.offline,
                              safety_checker=checker)
