"""The worker speaks the member's language: the job payload carries it (``DiscordTarget.locale``, default
"en-US"), and every text the worker writes — progress, results, failures — is rendered in it (issue 16)."""

from __future__ import annotations

from gpu_worker import contract
from gpu_worker.runner import JobRun, Outcome, _reason
from kitbooth import render
from kitbooth.errors import InvalidInput
from kitbooth.i18n import keyed
from tests.worker.conftest import put_face, wait_events
from tests.worker.test_generate import _payload
from tests.worker.test_runner import HiccupStore


def test_the_payload_carries_the_locale_and_older_payloads_read_as_english():
    target = contract.DiscordTarget(channel_id=1, user_id=2, locale="pt-BR")
    assert contract.DiscordTarget.from_json(target.to_json()).locale == "pt-BR"
    old = {"channel_id": 1, "user_id": 2}  # a payload from before issue 16
    assert contract.DiscordTarget.from_dict(old).locale == "en-US"


def test_a_keyed_refusal_is_rendered_in_the_payloads_locale():
    error = keyed(InvalidInput, "refusal.training_photos_gone")
    assert str(error) == "The training photos are gone. Upload them again with the command."  # logs stay English
    run = JobRun(kind="train", job_id=7, target=contract.DiscordTarget(channel_id=1, user_id=2, locale="it"))
    assert _reason(error, Outcome.FAILED, run) == \
        "Le foto dell'addestramento non ci sono più. Caricale di nuovo con il comando."
    assert _reason(InvalidInput("plain text"), Outcome.FAILED, run) == "plain text"  # no key: as written


def test_the_renderer_writes_progress_and_results_in_the_locale():
    assert render.progress_text("🧠", 3, 10, eta=95, locale="de").endswith("3/10 · noch ~1 Min. 35 Sek.")
    ready = render.concept_ready_result(kind="face", name="", seconds=42, steps=300, size_bytes=1_500_000,
                                        samples=[], locale="nl")
    assert ready.content == "✅ Ik heb je gezicht in 42 sec geleerd (300 stappen, 1,5 MB). Probeer nu `/genereren`!"
    out = render.generate_result(job_id=1, user_id=2, prompt="at the stadium", seeds=[5], pngs=[b"x"],
                                 nsfw=[True], likeness=[0.831], locale="tr")
    assert out.content.startswith("**at the stadium**\ntohum 5 · benzerlik 0,83")
    assert "1 görsel güvenlik filtresi tarafından gizlendi." in out.content
    assert [b.label for b in out.buttons] == ["U1", "🔁 Yeniden", "🎲 Çeşitle", "🗑 Sil"]


async def test_a_worker_failure_reaches_the_member_in_their_language(arq_pool, tmp_path, start_worker,
                                                                     worker_settings):
    settings = worker_settings.model_copy(update={"retry_defer_s": 0.05})
    store = HiccupStore(tmp_path / "artifacts")
    face = put_face(store, 84, 1, seed=3)
    store.fail("put_bytes", "outputs/94/", times=None)
    await start_worker(settings, store=store)
    p = _payload(94, 84, contract.DiscordTarget(channel_id=1, user_id=84, locale="fr"), face, count=1)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(94))
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "job.failed" for x in e))
    assert evs[-1].data["reason"] == ("Un service dont KitBooth dépend n'a pas répondu pendant un moment "
                                      "(tâche 94). Réessaie dans quelques minutes.")
