"""``kitbooth compare``: train every method on the same photos, generate the same pictures, measure, report.

For each method, with its defaults (``training.config.default_config("face", method=...)``): train on the photos
(timed, peak memory measured), then generate a fixed prompt set with fixed seeds twice — without a kit and with
one (a kit concept file or kit words), the same seed for both, so the kit is the only difference — and measure
identity against the held-out photos (dlib descriptors, ``training.face_identity``) and CLIP-T when a CLIP model
is given. ``training.compare_report`` writes the table, chart, sheets and JSON.

Resumable, per method, under ``OUT/<method>/``: ``concept.safetensors`` + ``train.json`` once trained, then
``images/`` + ``metrics.json`` once measured (all atomic). A later run reuses a method whose ``metrics.json``
was made from the same inputs (photos, base model, config, prompts, seeds, kit, held-out photos, CLIP model) and
says "reused"; one whose concept is there but not its measures is only generated and measured again. Everything
is checked before anything is written or a model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kitbooth import __version__
from training import cli_checks as check
from training import faces
from training.artifact import check_compatible, load_artifact, save_artifact, write_atomic
from training.compare_report import (
    NO_CHART,
    ImageRecord,
    MethodResult,
    has_matplotlib,
    identity_of,
    mean_clip,
    table,
    write_report,
)
from training.compose import Composer, ConceptUse
from training.config import default_config
from training.eval import EVAL_PROMPTS, ClipScorer
from training.face_identity import descriptor_distance, face_descriptor
from training.formats import import_file
from training.generate import GenerationRequest, generate
from training.generation_request import plain_text
from training.images import ImageRejected, load_image
from training.models import load_base_pipeline
from training.trainers import trainer_from_photos

PROMPTS: tuple[str, ...] = tuple(EVAL_PROMPTS["face"][:4])
DEFAULT_KIT_WORDS = "red and white home football kit"
SD15_HIDDEN = 768
CONCEPT, TRAINED, METRICS = "concept.safetensors", "train.json", "metrics.json"


@dataclass(frozen=True)
class Kit:
    """The kit the pictures are drawn with: a kit concept file, or kit words (no concept)."""

    words: str | None = None
    file: Path | None = None

    @property
    def label(self) -> str:
        return str(self.file) if self.file else f'"{self.words}"'


@dataclass(frozen=True)
class CompareOptions:
    photos: Path
    held_out: Path
    out: Path
    methods: tuple[str, ...]
    base_model: str
    kit: Kit = Kit(words=DEFAULT_KIT_WORDS)
    steps: int | None = None  # training steps (default: each method's own)
    resolution: int = 512
    sample_steps: int = 25
    size: int | None = None  # generated side (default: the resolution)
    prompts: tuple[str, ...] = PROMPTS
    seed: int = 0
    clip_model: str | None = None  # local path or hub id already in the cache; None: CLIP-T is n/a
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    safety_checker: bool | str = False
    ti_slots: int = 32
    lora_cache: int = 8
    progress: bool = True
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. DreamBooth's class images
    store: Any = None  # the artifact store (DreamBooth caches its class images there); None: drawn per run

    @property
    def side(self) -> int:
        return self.size or self.resolution

    def seeds(self) -> list[int]:
        return [self.seed + 1000 * i for i in range(len(self.prompts))]


@dataclass
class _Inputs:
    photos: list[Any]  # training.faces prepared photos
    held_out: list[Any]  # PIL images
    kit_art: Any = None
    digest: dict[str, str] = field(default_factory=dict)


def compare(opts: CompareOptions) -> list[MethodResult]:
    """Run the comparison (see the module docstring) and write the report; returns one result per method."""
    inputs = _read_inputs(opts)
    configs = {m: default_config("face", **{**opts.method_overrides.get(m, {}), "method": m, "steps": opts.steps,
                                            "resolution": opts.resolution}) for m in opts.methods}
    train_keys = {m: _key(c.to_json(), opts.base_model, inputs.digest["photos"]) for m, c in configs.items()}
    keys = {m: _key(train_keys[m], inputs.digest["held_out"], inputs.digest["kit"], list(opts.prompts),
                    opts.seeds(), opts.sample_steps, opts.side, opts.clip_model, str(opts.safety_checker))
            for m in opts.methods}
    done = {m: _finished(opts.out / m / METRICS, keys[m]) for m in opts.methods}
    todo = [m for m in opts.methods if done[m] is None]
    if not has_matplotlib():
        print(NO_CHART, file=sys.stderr)
    scorer = _clip(opts.clip_model) if todo else None
    pipe = composer = refs = kit_use = None
    if todo:
        pipe, composer = _load(opts)
        if inputs.kit_art is not None:
            check_compatible(inputs.kit_art, pipe)  # before anything is written, as the worker would refuse it
            kit_use = ConceptUse("compare/kit", inputs.kit_art)
        refs = _references(inputs.held_out)
    results = []
    for m in opts.methods:
        folder = opts.out / m
        if done[m] is not None:
            print(f"{m}: reused {folder} (trained and measured by an earlier run)")
            results.append(done[m])
            continue
        trained = _read_json(folder / TRAINED, train_keys[m])
        reused = trained is not None and (folder / CONCEPT).is_file()
        if reused:
            print(f"{m}: reused the concept trained by an earlier run ({folder / CONCEPT}); generating")
        else:
            trained = _train(pipe, composer, inputs.photos, configs[m], opts, folder, train_keys[m])
        art = load_artifact(folder / CONCEPT)
        result = MethodResult(method=m, key=keys[m], reused="concept" if reused else "no",
                              **{k: trained[k] for k in ("file_bytes", "train_seconds", "train_steps",
                                                         "peak_memory_bytes", "peak_memory_kind", "hidden_size")})
        result.images = _measure(pipe, composer, art, kit_use, opts, refs, scorer, folder, m)
        without, with_kit = ([r for r in result.images if r.kit == k] for k in (False, True))
        result.identity, result.identity_kit = identity_of(without), identity_of(with_kit)
        result.clip_t, result.clip_t_kit = mean_clip(without), mean_clip(with_kit)
        stored = result.to_dict() | {"reused": "no"}
        write_atomic(folder / METRICS, json.dumps(stored, indent=2).encode(), mode=0o644)
        results.append(result)
    info = _info(opts, results)
    files = write_report(opts.out, results, info)
    print("\n".join([*info["notes"], *table(results)]))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return results


# --- inputs --------------------------------------------------------------------------------------------------
def _read_inputs(opts: CompareOptions) -> _Inputs:
    """Photos (the selfie checks of ``kitbooth train``), held-out photos and the kit, or ``BadArgument``."""
    photos, skipped = check.photo_files(opts.photos)
    if skipped:
        print(check.skipped_line(skipped))
    report = faces.check_selfies(photos, resolution=opts.resolution)
    print(f"Photos in {opts.photos} ({len(photos)} files):")
    print(check.file_report(report))
    if not report.ok():
        raise check.BadArgument(f"--photos {opts.photos}: not enough usable photos of one face (see the list "
                                "above) — nothing was written.")
    held, _ = check.photo_files(opts.held_out)
    if not held:
        raise check.BadArgument(f"--held-out {opts.held_out}: no photos there — give a folder of photos of the "
                                "same person that are not in --photos.")
    images = []
    for name, data in held:
        try:
            images.append(load_image(data, name=name, min_side=64))
        except ImageRejected as exc:
            raise check.BadArgument(f"--held-out {opts.held_out / name}: {exc}") from None
    kit_art, kit_digest = None, _key(opts.kit.words)
    if opts.kit.file is not None:
        kit_art = import_file(opts.kit.file, kind="kit")  # the one validator (size too); a face is refused
        kit_digest = _key(hashlib.sha256(opts.kit.file.read_bytes()).hexdigest())
    return _Inputs(report.photos, images, kit_art, {"photos": _digest(photos), "held_out": _digest(held),
                                                    "kit": kit_digest})


def _digest(files: Sequence[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path, key: str) -> dict[str, Any] | None:
    """A stored record made from the same inputs, or None (absent, unreadable, or from other inputs)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def _finished(path: Path, key: str) -> MethodResult | None:
    """The stored result of a method measured from the same inputs, or None (then it is measured again)."""
    data = _read_json(path, key)
    try:
        result = MethodResult.from_dict(data) if data is not None else None
    except (TypeError, ValueError, KeyError):  # written by another version of this command
        return None
    if result is None or not all((path.parent / f).is_file() for f in [CONCEPT, *(r.file for r in result.images)]):
        return None  # a file of it was deleted since
    result.reused = "all"
    return result


def _clip(ref: str | None) -> Any:
    if ref is None:
        return None
    scorer = ClipScorer.load(ref)  # local files only: never downloads
    if scorer is None:
        raise check.BadArgument(f"--clip-model {ref}: no such CLIP model here (a folder, or a hub id already in "
                                "the cache; nothing is downloaded) — check it, or leave the option out.")
    return scorer


# --- the work ------------------------------------------------------------------------------------------------
def _load(opts: CompareOptions) -> tuple[Any, Any]:
    print(f"loading {opts.base_model} ...", file=sys.stderr)
    pipe = load_base_pipeline(opts.base_model, device=opts.device, dtype=opts.dtype, offline=opts.offline,
                              safety_checker=opts.safety_checker)
    pipe.set_progress_bar_config(disable=True)
    return pipe, Composer(pipe, slots=opts.ti_slots, lora_cache=opts.lora_cache)


def _references(held_out: Sequence[Any]) -> list[Any]:
    return [d for d in (face_descriptor(im) for im in held_out) if d is not None]


def _train(pipe: Any, composer: Any, photos: Sequence[Any], config: Any, opts: CompareOptions, folder: Path,
           key: str) -> dict[str, Any]:
    """Train one method, write its concept and ``train.json``; returns what ``train.json`` holds."""
    composer.evict_all()  # the trainer gets the bare pipeline
    bar = tqdm(total=config.steps, unit="step", desc=f"training {config.method}", disable=not opts.progress,
               file=sys.stderr, dynamic_ncols=True, leave=False)

    def on_progress(p: Any) -> None:
        bar.n = p.step
        bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        bar.refresh()

    try:
        with PeakMemory(pipe.unet.device) as memory:
            started = time.perf_counter()
            with trainer_from_photos(pipe, photos, config, base_model_id=opts.base_model, progress=on_progress,
                                     store=opts.store) as trainer:
                trainer.run()
                seconds = memory.synchronized(time.perf_counter) - started
                data = save_artifact(trainer.artifact(), folder / CONCEPT)
    finally:
        bar.close()
    trained = {"key": key, "file_bytes": len(data), "train_seconds": round(seconds, 3),
               "train_steps": trainer.step, "peak_memory_bytes": memory.peak, "peak_memory_kind": memory.kind,
               "hidden_size": int(pipe.text_encoder.config.hidden_size), "device": str(pipe.unet.device)}
    write_atomic(folder / TRAINED, json.dumps(trained, indent=2).encode(), mode=0o644)
    print(f"{config.method}: trained {trainer.step} steps in {seconds:.1f} s, {len(data):,} bytes")
    return trained


def _measure(pipe: Any, composer: Any, art: Any, kit_use: Any, opts: CompareOptions, refs: list[Any] | None,
             scorer: Any, folder: Path, method: str) -> list[ImageRecord]:
    """The fixed prompts × {no kit, kit}, the same seed for both: written under ``images/`` and measured."""
    face = ConceptUse(f"compare/{method}/{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}", art)
    kit_words = opts.kit.words
    records: list[ImageRecord] = []
    size, steps = opts.side, opts.sample_steps
    with tqdm(total=2 * len(opts.prompts), unit="image", desc=f"generating {method}", disable=not opts.progress,
              file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
        for i, (prompt, seed) in enumerate(zip(opts.prompts, opts.seeds(), strict=True)):
            requests = [GenerationRequest(prompt, [face], seed=seed, width=size, height=size, steps=steps),
                        GenerationRequest(prompt, [face, kit_use] if kit_use else [face], seed=seed, width=size,
                                          height=size, steps=steps, kit_words=kit_words)]
            for kit, (image,) in zip((False, True), generate(pipe, composer, requests), strict=True):
                name = f"images/{i:02d}-{'kit' if kit else 'nokit'}-seed{seed}.png"
                write_atomic(folder / name, image.png, mode=0o644)
                rec = ImageRecord(file=name, prompt=prompt, built=image.prompt, kit=kit, seed=seed, nsfw=image.nsfw)
                if refs:
                    d = face_descriptor(image.image)
                    rec.face_found = d is not None
                    if d is not None:
                        rec.identity_distance = sum(descriptor_distance(d, r) for r in refs) / len(refs)
                if scorer is not None:
                    rec.clip_t = scorer.score([image.image], [plain_text(image.prompt)])[0]
                records.append(rec)
                bar.update()
    composer.evict(face.key)
    print(f"{method}: generated and measured {len(records)} images in {folder / 'images'}")
    return records


class PeakMemory:
    """Peak memory of a block: CUDA max allocated on a GPU; on the CPU the resident set's peak over its level
    at the start, sampled every 10 ms by a thread."""

    def __init__(self, device: Any):
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.device = device
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_rss_peak_delta"
        self.peak: int | None = None
        self._stop = threading.Event()
        self._start = self._high = 0

    def synchronized(self, clock: Any) -> float:
        """``clock()`` once the GPU's queued work is finished (CUDA runs asynchronously)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return clock()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._high = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._high = max(self._high, _rss())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self._high, _rss()) - self._start


def _rss() -> int:
    """This process's resident set size in bytes (Linux /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _info(opts: CompareOptions, results: Sequence[MethodResult]) -> dict[str, Any]:
    notes = []
    small = sorted({r.hidden_size for r in results if r.hidden_size != SD15_HIDDEN})
    if small:
        notes.append(f"The base model is not full-size SD 1.5 (text width {small[0]}, not {SD15_HIDDEN}; e.g. the "
                     "tiny test model): these numbers mean nothing.")
    if opts.clip_model is None:
        notes.append("CLIP-T is n/a: no --clip-model was given (nothing is downloaded).")
    return {"kitbooth_version": __version__, "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "base_model": opts.base_model, "photos": str(opts.photos), "held_out": str(opts.held_out),
            "kit": opts.kit.label, "prompts": list(opts.prompts), "seeds": opts.seeds(),
            "sample_steps": opts.sample_steps, "size": opts.side, "resolution": opts.resolution,
            "clip_model": opts.clip_model, "notes": notes}
