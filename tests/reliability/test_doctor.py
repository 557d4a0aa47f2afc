"""``kitbooth doctor``: every kind of finding made for real (rows, files and arq keys written by hand as a crash, a
lost Redis or a half-done delete would leave them), reported one line each with exit 1, repaired by ``--fix`` (each
repair printed), and a second scan is clean — while the healthy rows, files and queued jobs beside them stay."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import result_key_prefix

from gpu_worker import contract
from kitbooth.cli import main
from kitbooth.settings import Settings
from storage import LocalArtifactStore, keys
from storage.database import Database
from tests.reliability.figures import count

OLD = "2020-01-01T00:00:00.000+00:00"  # a row nobody touched for years
KINDS = ("concept-file-missing", "output-file-missing", "file-without-row", "training-files-kept", "concept-stuck",
         "job-stuck", "arq-orphan")


@pytest.fixture
def doctor_env(tmp_path, redis_url, monkeypatch):
    queue = f"kb:doctor:{uuid.uuid4().hex[:8]}:queue"
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in {"DATA_DIR": str(tmp_path / "data"), "REDIS_URL": redis_url, "QUEUE_NAME": queue,
                        "JOB_TIMEOUT_S": "60"}.items():
        monkeypatch.setenv(f"KITBOOTH_{name}", value)
    for var in ("KITBOOTH_DATABASE_PATH", "KITBOOTH_ARTIFACT_DIR", "KITBOOTH_STORE_URL"):
        monkeypatch.delenv(var, raising=False)
    return Settings(_env_file=None, data_dir=tmp_path / "data", redis_url=redis_url, queue_name=queue,
                    job_timeout_s=60)


def _age(store: LocalArtifactStore, key: str) -> None:
    then = time.time() - 3600
    os.utime(store.root / key, (then, then))


async def _age_rows(db: Database, table: str, ids: list[int]) -> None:
    col = "created_at" if table == "outputs" else "updated_at"
    async with db.transaction() as conn:
        for i in ids:
            await conn.execute(f"UPDATE {table} SET {col} = ? WHERE id = ?", (OLD, i))


async def _make_mess(s: Settings) -> dict:
    """Each kind of inconsistency once, beside a healthy user whose things must all survive the repair."""
    store = LocalArtifactStore(s.artifacts_path)
    db = await Database.open(s.db_path)
    redis = await create_pool(RedisSettings.from_dsn(s.redis_url), default_queue_name=s.queue_name)
    try:
        put = lambda key, data=b"x": (store.put_bytes(key, data), _age(store, key))  # noqa: E731
        await db.ensure_user(1)
        await db.ensure_user(2)
        # healthy: a ready face with its file, a finished generate with its image, a queued job arq holds
        good = await db.create_concept(owner_id=1, guild_id=5, kind="face", name="me", method="pivotal",
                                       status="ready")
        good = await db.update_concept(good.id, artifact_key=keys.concept_key(1, good.id))
        put(good.artifact_key)
        done = await db.create_job(kind="generate", user_id=1, concept_id=good.id)
        await db.update_job(done.id, status="done")
        put(keys.output_key(1, done.id, 0))
        await db.add_output(job_id=done.id, user_id=1, artifact_key=keys.output_key(1, done.id, 0), seed=1)
        waiting = await db.create_job(kind="generate", user_id=1)
        await db.update_job(waiting.id, payload={"job_id": waiting.id}, arq_id=contract.arq_job_id(waiting.id))
        await redis.enqueue_job(contract.GENERATE_JOB, {}, _job_id=contract.arq_job_id(waiting.id),
                                _defer_by=3600)
        young = await db.create_concept(owner_id=2, guild_id=5, kind="face", name="new", method="pivotal",
                                        status="training")  # being set up right now: its job comes next
        # 1. a ready concept whose file is gone
        lost = await db.create_concept(owner_id=2, guild_id=5, kind="face", name="lost", method="pivotal",
                                       status="ready", artifact_key="users/2/concepts/999.safetensors")
        # 2. an output row whose image is gone
        shown = await db.create_job(kind="generate", user_id=2)
        await db.update_job(shown.id, status="done")
        out = await db.add_output(job_id=shown.id, user_id=2, artifact_key=keys.output_key(2, shown.id, 0), seed=2)
        # 3. files without rows: an unknown user, a concept and a job the database does not have
        put("users/77/photos/3/00.png")
        put(keys.concept_key(2, 4242))
        put(keys.output_key(2, 5151, 0))
        # 4. face crops kept after the training ended (the concept failed)
        ended = await db.create_concept(owner_id=2, guild_id=5, kind="face", name="ended", method="pivotal",
                                        status="failed")
        put(keys.photo_key(2, ended.id, 0))
        put(keys.checkpoint_prefix(2, ended.id) + "state.ckpt")
        # 5. a concept "training" with no live job (its job row failed without telling the concept)
        stuck = await db.create_concept(owner_id=2, guild_id=5, kind="face", name="stuck", method="pivotal",
                                        status="training")
        put(keys.photo_key(2, stuck.id, 0))
        gone_train = await db.create_job(kind="train", user_id=2, concept_id=stuck.id)
        await db.update_job(gone_train.id, status="failed")
        # 6. a generate "running" for years that arq has never heard of (Redis lost it, no reconcile ran)
        hung = await db.create_job(kind="generate", user_id=2)
        await db.update_job(hung.id, status="running")
        # 7. a queued arq job and an arq result of DB jobs that no longer exist
        await redis.enqueue_job(contract.GENERATE_JOB, {}, _job_id=contract.arq_job_id(987654), _defer_by=3600)
        await redis.set(result_key_prefix + contract.arq_job_id(876543), b"old result naming users/2/outputs/")
        await _age_rows(db, "concepts", [good.id, lost.id, ended.id, stuck.id])
        await _age_rows(db, "jobs", [done.id, waiting.id, hung.id, shown.id])
        await _age_rows(db, "outputs", [out.id])
        return {"good": good.id, "done": done.id, "waiting": waiting.id, "young": young.id, "lost": lost.id,
                "out": out.id, "ended": ended.id, "stuck": stuck.id, "hung": hung.id}
    finally:
        await db.close()
        await redis.aclose()


async def _state(s: Settings, ids: dict) -> dict:
    db = await Database.open(s.db_path)
    redis = await create_pool(RedisSettings.from_dsn(s.redis_url), default_queue_name=s.queue_name)
    try:
        return {
            "concepts": {n: (await db.get_concept(ids[n])).status for n in ("good", "young", "lost", "stuck")},
            "jobs": {n: (await db.get_job(ids[n])).status for n in ("done", "waiting", "hung")},
            "outputs": [o.id for o in await db.list_outputs(limit=100)],
            "files": LocalArtifactStore(s.artifacts_path).list(""),
            "queue": sorted(k.decode() for k in await redis.zrange(s.queue_name, 0, -1)),
            "result": await redis.exists(result_key_prefix + contract.arq_job_id(876543)),
        }
    finally:
        await db.close()
        await redis.aclose()


def test_doctor_reports_each_inconsistency_and_fix_repairs_it(doctor_env, capsys):
    s = doctor_env
    assert main(["migrate"]) == 0
    ids = asyncio.run(_make_mess(s))
    capsys.readouterr()

    assert main(["doctor", "--scan-only"]) == 1
    report = capsys.readouterr().out
    lines = [ln for ln in report.splitlines() if ln.startswith("❌ ")]
    found = {ln[2:].split(":")[0] for ln in lines}
    assert found == set(KINDS), report
    assert f"concept {ids['lost']} (face of user 2) is ready" in report
    assert "users/77/: files of user 77, who is not in the database" in report
    assert "concept 4242 of users/2 is not in the database" in report and "job 5151 of users/2" in report
    assert f"users/2/photos/{ids['ended']}/" in report and f"users/2/checkpoints/{ids['ended']}/" in report
    assert f"concept {ids['stuck']} (face of user 2) is 'training' with no live training job" in report
    assert f"job {ids['hung']} (generate of user 2) is 'running'" in report
    assert "kb-987654" in report and "kb-876543" in report
    healthy = (f"job {ids['waiting']}", f"concept {ids['good']} ", f"concept {ids['young']} ", f"job {ids['done']} ")
    assert not [h for h in healthy if h in report], report  # the healthy ones are not findings
    before = asyncio.run(_state(s, ids))

    assert main(["doctor", "--scan-only", "--fix"]) == 0
    fixed = capsys.readouterr().out
    assert fixed.count("🔧 fixed ") == len(lines) and f"{len(lines)}/{len(lines)} finding(s) repaired" in fixed
    after = asyncio.run(_state(s, ids))
    assert after["concepts"] == {"good": "ready", "young": "training", "lost": "failed", "stuck": "failed"}
    assert after["jobs"] == {"done": "done", "waiting": "queued", "hung": "failed"}
    assert after["outputs"] == [o for o in before["outputs"] if o != ids["out"]]
    assert after["files"] == [keys.concept_key(1, ids["good"]), keys.output_key(1, ids["done"], 0)]
    assert after["queue"] == [contract.arq_job_id(ids["waiting"])] and not after["result"]

    assert main(["doctor", "--scan-only"]) == 0  # idempotent: nothing left, and a second --fix changes nothing
    assert "✅ consistent" in capsys.readouterr().out
    assert main(["doctor", "--scan-only", "--fix"]) == 0
    assert asyncio.run(_state(s, ids)) == after
    count("doctor", finding_kinds=len(found), findings=len(lines), repaired=fixed.count("🔧 fixed "),
          left_after_fix=0, healthy_kept=len(healthy))


def test_doctor_runs_the_setup_checks_first_and_says_how_to_start(doctor_env, capsys, monkeypatch):
    """Without --scan-only the set-up table comes first; a missing database or an unreachable Redis is one clear
    line, no traceback."""
    assert main(["doctor", "--scan-only"]) == 1
    err = capsys.readouterr().err
    assert "does not exist: run `kitbooth migrate` first" in err and "Traceback" not in err
    assert main(["migrate"]) == 0
    capsys.readouterr()
    assert main(["doctor", "--no-torch"]) == 1  # no token: the set-up table fails, the scan still runs
    out = capsys.readouterr().out
    assert "✅ Redis reachable" in out and "❌ Discord token set" in out and "✅ consistent" in out
    monkeypatch.setenv("KITBOOTH_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    assert main(["doctor", "--scan-only"]) == 1
    err = capsys.readouterr().err
    assert "Cannot reach Redis at redis://127.0.0.1:1/0" in err and "Traceback" not in err
    count("doctor", cli_runs=4)
