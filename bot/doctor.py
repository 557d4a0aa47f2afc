"""The consistency scan of ``kitbooth doctor``: orphans and contradictions between the database, the artifact
store and Redis, each with its repair. Torch-free (bot install: it reads the database).

A ``Finding`` is one line of the report and carries its own repair. Every repair is idempotent and leaves the
three places agreeing, so a second scan after ``--fix`` finds nothing:

- ``concept-file-missing``: a ready concept whose file is not in the store → the concept is marked failed.
- ``output-file-missing``: an output row whose image is not in the store → the row is deleted.
- ``file-without-row``: files under ``users/<id>/`` of an unknown user, or of a concept / job the database does not
  have (or that belongs to someone else), and ``guilds/<id>/`` files of an unknown concept or kit → deleted.
- ``training-files-kept``: face photos or checkpoints of a concept whose training has ended → deleted.
- ``concept-stuck``: a concept pending/in training with no live training job → failed, its photos deleted.
- ``job-stuck``: a queued/running job untouched past the longest arq may keep it, that arq no longer runs or
  queues → failed (a training's concept too).
- ``arq-orphan``: a queued arq job, or an arq result, of a DB job that no longer exists → removed from Redis.

Each check leaves rows and files younger than ``grace_s`` alone: a request being set up writes its row first and
its files right after (never the other way round), so a young row without files is work in progress.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from arq.constants import job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus

from bot.jobs import arq_ids
from gpu_worker import contract
from storage import keys

log = logging.getLogger(__name__)

GRACE_S = 120.0  # rows younger than this may still be getting their files
ARQ_MAX_TRIES = 3  # the most tries of any job kind (gpu_worker.worker's max_tries)
STUCK_MARGIN_S = 60.0
CONCEPT_LOST = "Its training was lost (found by kitbooth doctor). Run /train again."
FILE_LOST = "Its file is missing from the store (found by kitbooth doctor). Train it again."
JOB_LOST = "This job was lost and never finished (found by kitbooth doctor). Please try again."
_CONCEPT_FILE = re.compile(r"^(\d+)\.(?:safetensors|bin|f32|png)$")  # a concept's (or kit's) own file


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    repair: Callable[[], Awaitable[str]] = field(compare=False, repr=False)

    def line(self) -> str:
        return f"{self.kind}: {self.detail}"


def _age_s(iso: str | None, now: datetime) -> float:
    if not iso:
        return float("inf")
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return float("inf")
    return (now - (then if then.tzinfo else then.replace(tzinfo=UTC))).total_seconds()


class Scan:
    """One scan over ``db`` (storage.database.Database), ``store`` (ArtifactStore) and ``redis`` (arq's pool)."""

    def __init__(self, db: Any, store: Any, redis: Any, settings: Any, *, grace_s: float = GRACE_S,
                 now: datetime | None = None):
        self.db, self.store, self.redis, self.settings = db, store, redis, settings
        self.grace_s = grace_s
        self.now = now or datetime.now(UTC)
        self.findings: list[Finding] = []

    def _add(self, kind: str, detail: str, repair: Callable[[], Awaitable[str]]) -> None:
        self.findings.append(Finding(kind, detail, repair))

    def _young(self, iso: str | None) -> bool:
        return _age_s(iso, self.now) < self.grace_s

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    # --- the scan ------------------------------------------------------------------------------------
    async def run(self) -> list[Finding]:
        # Files first, rows second: a file's row is always written before it, so every file listed has its row
        # by the time the rows are read (unless it really is an orphan), even on S3 where a file has no age.
        self.files = await self._in_thread(self.store.list, "")
        self.users = {int(r[0]) for r in await self.db._all("SELECT id FROM users")}
        self.concepts = {c.id: c for c in await self.db.list_concepts()}
        self.jobs = {j.id: j for j in await self.db.list_jobs()}
        self.kits = {int(r[0]): int(r[1]) for r in await self.db._all("SELECT id, guild_id FROM kits")}
        await self._rows_without_files()
        await self._files_without_rows()
        await self._training_files_kept()
        await self._stuck_concepts()
        await self._stuck_jobs()
        await self._arq_orphans()
        return self.findings

    async def _rows_without_files(self) -> None:
        files = set(self.files)
        for c in self.concepts.values():
            if c.status == "ready" and c.artifact_key and c.artifact_key not in files and not self._young(c.updated_at):
                self._add("concept-file-missing", f"concept {c.id} ({c.kind} of user {c.owner_id}) is ready but "
                          f"{c.artifact_key} is not in the store", self._fail_concept(c.id, FILE_LOST))
        rows = await self.db._all("SELECT id, job_id, artifact_key, created_at FROM outputs")
        for oid, job_id, key, created in rows:
            if key not in files and not self._young(created):
                self._add("output-file-missing", f"output {oid} of job {job_id}: {key} is not in the store",
                          self._delete_output(int(oid)))

    def _owner_known(self, uid: int, folder: str, ident: int) -> bool:
        if folder in ("photos", "checkpoints", "concepts", "references", "instant"):
            c = self.concepts.get(ident)
            return c is not None and c.owner_id == uid
        j = self.jobs.get(ident)  # outputs, exports
        return j is not None and j.user_id == uid

    async def _files_without_rows(self) -> None:
        units: dict[str, str] = {}  # a prefix or key to delete -> why
        for key in self.files:
            parts = key.split("/")
            if len(parts) < 3 or parts[0] not in ("users", "guilds") or not parts[1].isdigit():
                continue  # not a layout this scan knows (e.g. backups): not ours to judge
            owner = int(parts[1])
            if parts[0] == "users" and owner not in self.users:
                units[keys.user_prefix(owner)] = f"files of user {owner}, who is not in the database"
                continue
            if len(parts) < 4:
                continue
            folder, leaf = parts[2], parts[3]
            m = _CONCEPT_FILE.match(leaf)
            ident = int(m.group(1)) if m else int(leaf.split("-")[0]) if leaf.split("-")[0].isdigit() else None
            if ident is None:
                continue
            unit = key if m else "/".join(parts[:4]) + "/"
            if parts[0] == "users":
                known = folder not in ("photos", "checkpoints", "concepts", "references", "instant", "outputs",
                                       "exports") or self._owner_known(owner, folder, ident)
                what = "concept" if folder in ("photos", "checkpoints", "concepts", "references", "instant") else "job"
            elif folder == "previews":
                known, what = self.kits.get(ident) == owner, "kit"
            else:
                c = self.concepts.get(ident)
                known, what = c is not None and c.guild_id == owner, "concept"
            if not known:
                units[unit] = f"{what} {ident} of {parts[0]}/{owner} is not in the database"
        for unit, why in units.items():
            young = [k for k in self.files if k.startswith(unit) and self._file_young(k)]
            if not young:
                self._add("file-without-row", f"{unit}: {why}", self._delete_unit(unit))

    def _file_young(self, key: str) -> bool:
        """A local file written within the grace period (S3 objects are judged by their rows alone)."""
        root = getattr(self.store, "root", None)
        try:
            return root is not None and (self.now.timestamp() - (root / key).stat().st_mtime) < self.grace_s
        except OSError:
            return False

    async def _training_files_kept(self) -> None:
        for c in self.concepts.values():
            if c.status in ("pending", "training") or self._young(c.updated_at):
                continue
            if c.kind == "face" and c.owner_id is not None:
                prefixes = [keys.photos_prefix(c.owner_id, c.id), keys.checkpoint_prefix(c.owner_id, c.id)]
            elif c.guild_id is not None:
                prefixes = [keys.guild_checkpoint_prefix(c.guild_id, c.id)]
            else:
                continue
            for prefix in prefixes:
                n = sum(1 for k in self.files if k.startswith(prefix))
                if n:
                    self._add("training-files-kept", f"{prefix}: {n} file(s) kept after concept {c.id}'s training "
                              f"ended ({c.status})", self._delete_unit(prefix))

    def _live_training(self, concept_id: int) -> bool:
        return any(j.concept_id == concept_id and j.kind == "train" and j.status in ("queued", "running")
                   for j in self.jobs.values())

    async def _stuck_concepts(self) -> None:
        for c in self.concepts.values():
            if c.status in ("pending", "training") and not self._young(c.updated_at) and not self._live_training(c.id):
                self._add("concept-stuck", f"concept {c.id} ({c.kind} of user {c.owner_id}) is {c.status!r} with no "
                          "live training job", self._fail_concept(c.id, CONCEPT_LOST))

    def stuck_after_s(self) -> float:
        """The longest arq may keep one job: every try at the worker's timeout, plus a margin."""
        return float(self.settings.job_timeout_s) * ARQ_MAX_TRIES + STUCK_MARGIN_S

    async def _arq_alive(self, job: Any) -> bool:
        for arq_id in arq_ids(job):
            status = await ArqJob(arq_id, self.redis, _queue_name=self.settings.queue_name).status()
            if status in (JobStatus.queued, JobStatus.deferred, JobStatus.in_progress):
                return True
        return False

    async def _stuck_jobs(self) -> None:
        limit = self.stuck_after_s()
        for j in self.jobs.values():
            if j.status not in ("queued", "running") or _age_s(j.updated_at, self.now) < limit:
                continue
            if await self._arq_alive(j):
                continue
            self._add("job-stuck", f"job {j.id} ({j.kind} of user {j.user_id}) is {j.status!r} since {j.updated_at} "
                      f"(over {limit:.0f}s) and arq neither queues nor runs it", self._fail_job(j.id))

    async def _arq_orphans(self) -> None:
        queue = self.settings.queue_name
        for raw in await self.redis.zrange(queue, 0, -1):
            arq_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            parsed = contract.parse_arq_job_id(arq_id)
            if parsed is not None and parsed[0] not in self.jobs:
                self._add("arq-orphan", f"{queue} holds {arq_id}, whose job {parsed[0]} is not in the database",
                          self._drop_arq(arq_id))
        async for raw in self.redis.scan_iter(match=result_key_prefix + "kb-*", count=500):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            arq_id = name[len(result_key_prefix):]
            parsed = contract.parse_arq_job_id(arq_id)
            if parsed is not None and parsed[0] not in self.jobs:
                self._add("arq-orphan", f"{name}: the result of job {parsed[0]}, which is not in the database",
                          self._drop_arq(arq_id))

    # --- repairs (each returns what it did; each is idempotent) ---------------------------------------
    def _fail_concept(self, concept_id: int, reason: str) -> Callable[[], Awaitable[str]]:
        async def repair() -> str:
            c = await self.db.get_concept(concept_id)
            if c is None:
                return f"concept {concept_id} is gone already"
            changes: dict[str, Any] = {"status": "failed", "error": reason}
            if c.artifact_key and not await self._in_thread(self.store.exists, c.artifact_key):
                changes["artifact_key"] = None
            await self.db.update_concept(concept_id, **changes)
            gone = 0
            if c.kind == "face" and c.owner_id is not None:
                for prefix in (keys.photos_prefix(c.owner_id, c.id), keys.checkpoint_prefix(c.owner_id, c.id)):
                    gone += await self._in_thread(self.store.delete_prefix, prefix)
            elif c.guild_id is not None:
                gone += await self._in_thread(self.store.delete_prefix, keys.guild_checkpoint_prefix(c.guild_id, c.id))
            return f"concept {concept_id} marked failed; {gone} training file(s) deleted"
        return repair

    def _fail_job(self, job_id: int) -> Callable[[], Awaitable[str]]:
        async def repair() -> str:
            j = await self.db.get_job(job_id)
            if j is None or j.status not in ("queued", "running"):
                return f"job {job_id} has ended already"
            await self.db.update_job(job_id, status="failed", error=JOB_LOST)
            extra = ""
            if j.kind == "train" and j.concept_id is not None:
                c = await self.db.get_concept(j.concept_id)
                if c is not None and c.status in ("pending", "training"):
                    extra = "; " + await self._fail_concept(c.id, CONCEPT_LOST)()
            return f"job {job_id} marked failed{extra}"
        return repair

    def _delete_output(self, output_id: int) -> Callable[[], Awaitable[str]]:
        async def repair() -> str:
            async with self.db.transaction() as conn:
                cur = await conn.execute("DELETE FROM outputs WHERE id = ?", (output_id,))
            return f"output row {output_id} deleted" if cur.rowcount else f"output row {output_id} is gone already"
        return repair

    def _delete_unit(self, unit: str) -> Callable[[], Awaitable[str]]:
        async def repair() -> str:
            if unit.endswith("/"):
                n = await self._in_thread(self.store.delete_prefix, unit)
            else:
                n = int(await self._in_thread(self.store.delete, unit))
            return f"{unit}: {n} file(s) deleted"
        return repair

    def _drop_arq(self, arq_id: str) -> Callable[[], Awaitable[str]]:
        async def repair() -> str:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.settings.queue_name, arq_id)
                pipe.delete(job_key_prefix + arq_id, retry_key_prefix + arq_id, result_key_prefix + arq_id)
                removed, deleted = await pipe.execute()
            return f"{arq_id}: {int(removed)} queue entry and {int(deleted)} key(s) removed from Redis"
        return repair


async def scan(db: Any, store: Any, redis: Any, settings: Any, **kw: Any) -> list[Finding]:
    return await Scan(db, store, redis, settings, **kw).run()


async def repair(findings: list[Finding]) -> tuple[list[str], list[str]]:
    """Run each finding's repair (logged); (what was done, what failed)."""
    done, failed = [], []
    for f in findings:
        try:
            what = await f.repair()
        except Exception as exc:  # noqa: BLE001 - one repair failing must not stop the others
            failed.append(f"{f.kind}: {f.detail}: {type(exc).__name__}: {exc}")
            log.exception("doctor: repairing %s failed", f.line())
            continue
        log.info("doctor repaired %s: %s", f.kind, what)
        done.append(f"{f.kind}: {what}")
    return done, failed
