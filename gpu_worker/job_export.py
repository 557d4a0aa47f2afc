"""The ``export`` job: the user's own concept converted to A1111 / kohya / diffusers files, stored and posted."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from gpu_worker import contract
from gpu_worker.context import JobInfo, WorkerContext
from gpu_worker.gpu import PRIO_LIGHT
from gpu_worker.runner import JobKind, JobRun
from gpu_worker.validation import validate_export
from kitbooth.errors import NotFound
from kitbooth.i18n import keyed
from kitbooth.render import MAX_FILES, export_result
from storage import ArtifactNotFound

DISCORD_FILE_LIMIT = 10 * 1024 * 1024  # bytes per attachment


async def _body(w: WorkerContext, info: JobInfo, run: JobRun, p: contract.ExportPayload) -> dict:
    validate_export(p)
    try:
        data = await asyncio.to_thread(w.store.get_bytes, p.concept_key)
    except ArtifactNotFound:
        raise keyed(NotFound, "failure.export_concept_gone") from None
    prefix = p.output_prefix if p.output_prefix.endswith("/") else p.output_prefix + "/"
    with tempfile.TemporaryDirectory(prefix="kb-export-") as tmp:
        paths, trigger = await w.lane.call(lambda: w.engine.export(data, list(p.formats), Path(tmp), p.name),
                                           priority=PRIO_LIGHT)
        file_keys, files = [], []
        for path in paths:
            rel = path.relative_to(tmp).as_posix()
            await asyncio.to_thread(w.store.put_file, prefix + rel, path)
            file_keys.append(prefix + rel)
            if path.is_file() and path.stat().st_size <= DISCORD_FILE_LIMIT and len(files) < MAX_FILES:
                files.append((rel.replace("/", "-"), path.read_bytes()))
    await run.deliver(w, export_result(formats=list(p.formats), files=files, trigger=trigger, locale=p.target.locale),
                      "job.done", file_keys=file_keys)
    return {"ok": True, "file_keys": file_keys}


# Seconds of work; two tries (the files are overwritten).
EXPORT = JobKind(contract.EXPORT_JOB, _body, max_tries=2, timeout_s=lambda s: min(s.job_timeout_s, 180.0))
