"""The worker's job functions: one ``JobKind`` per arq function, each with a deliberate timeout and tries.

- train_slice (``job_train``): timeout = job_timeout_s, 4 tries; a retry resumes the slice's checkpoint.
- generate / upscale / export (``job_generate``, ``job_upscale``, ``job_export``): seconds of work, at most
  180 s, 2 tries (outputs are overwritten, the message edit is idempotent).
- cancel (``job_cancel``): tiny and idempotent, 30 s, 3 tries.
- squad (``job_squad``): a squad photo, at most 240 s, 2 tries.
The failure policy they all share is ``gpu_worker.runner``'s.
"""

from __future__ import annotations

from typing import Any

from arq import func

from gpu_worker.job_cancel import CANCEL
from gpu_worker.job_export import EXPORT
from gpu_worker.job_generate import GENERATE, generate
from gpu_worker.job_squad import SQUAD
from gpu_worker.job_train import TRAIN
from gpu_worker.job_upscale import UPSCALE
from gpu_worker.runner import TIMEOUT_MARGIN_S, JobKind, arq_function
from kitbooth.settings import Settings

KINDS: tuple[JobKind, ...] = (TRAIN, GENERATE, UPSCALE, EXPORT, CANCEL, SQUAD)
_CUSTOM = {GENERATE.name: generate}  # generate marks itself as preparing a batch before the runner starts


def job_functions(settings: Settings) -> list[Any]:
    """arq ``func`` entries for every kind, timeouts and tries from its ``JobKind`` (the runner enforces the
    timeout; arq's, a little later, is a backstop)."""
    return [
        func(_CUSTOM.get(k.name) or arq_function(k), name=k.name, timeout=k.timeout_s(settings) + TIMEOUT_MARGIN_S,
             max_tries=k.max_tries, keep_result=k.keep_result_s)
        for k in KINDS
    ]
