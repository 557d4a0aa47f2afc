"""The message catalogues are complete: every key of the English catalogue is translated in every shipped
language, no translation drops or adds a placeholder, plural forms come in pairs, Discord's limits hold
(command and option names, descriptions, choices, form labels), and every reason the selfie checks write has
its key. (That the live command tree has a key for every command, option and choice is checked in
``tests/bot/test_i18n.py``, which walks ``bot.tree`` through the translator.)"""

from __future__ import annotations

import re

import pytest

from kitbooth import i18n

LANGS = i18n.languages()
EN = i18n.catalogue(i18n.ENGLISH)
NAME_RX = re.compile(r"^[-_\w]{1,32}$")  # Discord: ^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$, lower case


def test_every_shipped_language_has_a_catalogue():
    assert set(i18n.SHIPPED.values()) <= set(LANGS), "a Discord locale in SHIPPED has no .po file"
    assert set(LANGS) <= set(i18n.SHIPPED.values()), "a .po file no Discord locale maps to"
    assert len(EN) > 100


@pytest.mark.parametrize("lang", [x for x in LANGS if x != i18n.ENGLISH])
def test_every_key_is_translated_with_the_same_placeholders(lang):
    cat = i18n.catalogue(lang)
    missing = sorted(set(EN) - set(cat))
    assert not missing, f"{lang}: {len(missing)} keys not translated: {missing[:20]}"
    extra = sorted(set(cat) - set(EN))
    assert not extra, f"{lang}: keys the English catalogue does not have (orphans): {extra[:20]}"
    wrong = {k: (sorted(i18n.placeholders(EN[k])), sorted(i18n.placeholders(cat[k])))
             for k in EN if i18n.placeholders(EN[k]) != i18n.placeholders(cat[k])}
    assert not wrong, f"{lang}: placeholders dropped or added (en, {lang}): {wrong}"


@pytest.mark.parametrize("lang", LANGS)
def test_discord_limits_and_plural_pairs(lang):
    cat = i18n.catalogue(lang)
    for key, text in cat.items():
        if key.startswith("cmd.") and key.endswith(".name"):
            assert NAME_RX.match(text) and text == text.lower() and " " not in text, f"{lang} {key}: {text!r}"
        if key.endswith(".description") or key.startswith("choice."):
            assert 1 <= len(text) <= 100, f"{lang} {key}: {len(text)} characters"
        if key in ("modal.train.title", "modal.train.photos", "modal.train.consent"):
            assert len(text) <= 45, f"{lang} {key}: {len(text)} characters (Discord allows 45)"
        if key.endswith(".one"):
            assert key[:-4] + ".other" in cat, f"{lang} {key}: no .other form"
    # Option names are unique within their command, in every language.
    by_command: dict[str, list[str]] = {}
    for key, text in cat.items():
        parts = key.split(".")
        if key.startswith("cmd.") and key.endswith(".name") and len(parts) >= 4:
            by_command.setdefault(".".join(parts[:-2]), []).append(text)
    by_command["(top level)"] = [t for k, t in cat.items() if k.startswith("cmd.") and k.count(".") == 2
                                 and k.endswith(".name")]
    for cmd, names in by_command.items():
        dupes = {n for n in names if names.count(n) > 1}
        assert not dupes, f"{lang} {cmd}: names {dupes} twice"


def test_a_translation_fills_its_fields_and_falls_back_to_english():
    assert i18n.translate("refusal.prompt_too_long", "de", length=1234, limit=300) == \
        "Dieser Prompt hat 1234 Zeichen — bleib bei höchstens 300."
    assert i18n.translate("refusal.prompt_too_long", "ja", length=1234, limit=1000) == \
        "That prompt is 1234 characters — keep it to 1000."
    assert i18n.translate("catalogue.file_too_big", "de", size=12.25, limit=10.0) == \
        "Diese Datei hat 12,2 MB; das Limit liegt bei 10,0 MB."
    assert i18n.Lang.pick("ja", "pt-BR") == "pt_BR" and i18n.Lang.pick("es-419") == "es_ES"
    assert i18n.Lang.pick(None, "ko") == "en"
    assert i18n.translate("train.started", "fr", what="x", count=1, queue="q").startswith("🏋️ J'entraîne x sur 1 photo ")
    assert "2 photos" in i18n.translate("train.started", "en-US", what="x", count=2, queue="q")
    assert i18n.fmt_duration(95, "de") == "1 Min. 35 Sek." and i18n.fmt_number(1.5, "pt-BR", digits=1) == "1,5"
    assert i18n.translate("no.such.key", "de") == "no.such.key"


def test_every_reason_the_photo_checks_write_has_a_key():
    from bot.photo_reasons import TEMPLATES, reason_text
    from training import photo_report

    for name in ("NO_FACE", "TWO_PEOPLE", "TOO_SMALL", "BLURRY", "DIFFERENT", "TOO_MANY", "SAME_AS", "OK"):
        assert getattr(photo_report, name) in TEMPLATES.values(), f"training.photo_report.{name} has no key"
    for key in TEMPLATES:
        assert key in EN, f"{key} is not in the English catalogue"
    assert reason_text("photo 2: " + photo_report.SAME_AS.format(n=1), "de") == \
        "Foto 2: dasselbe Foto wie Foto 1 — übersprungen"
    assert reason_text("photo 3: the file is too large (31 MB) — send a photo under 20 MB", "fr") == \
        "photo 3 : le fichier est trop lourd (31 Mo) — envoie une photo de moins de 20 Mo"
    assert reason_text("something new", "de") == "something new"  # unknown reasons stay as written


@pytest.mark.parametrize("kwargs", [dict(width=100, height=512, steps=20, guidance=7.0),
                                    dict(width=512, height=512, steps=0, guidance=7.0),
                                    dict(width=512, height=512, steps=20, guidance=99.0)])
def test_stdlib_only_refusals_carry_a_key_whose_english_is_their_message(kwargs):
    """``kitbooth.limits`` may not import Babel, so it writes its English text and names the key beside it."""
    from kitbooth import limits
    from kitbooth.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        limits.check_picture(**kwargs)
    assert err.value.key and str(err.value) == i18n.translate(err.value.key, "en", **err.value.fields)
    assert i18n.render_error(err.value, "de") != str(err.value)


def test_the_librarys_keyed_refusals_match_their_english_text():
    """``training`` writes English and names the key; the English catalogue must say the same."""
    from training import concept_file

    assert EN["refusal.import_face"] == concept_file.FACE_REFUSED
    assert concept_file.WRONG_BASE.format(guess="SDXL", base="SD 1.5") == \
        i18n.translate("refusal.import_wrong_base", "en", guess="SDXL", base="SD 1.5")


def test_the_image_checks_reasons_are_all_translated():
    """Real refusals of ``training.images.load_image`` (empty, not an image, too small, animated, damaged, too
    many pixels) each match a checklist template, so the checklist never falls back to English for them."""
    import io

    from PIL import Image

    from bot.photo_reasons import reason_text
    from training.images import ImageRejected, load_image

    def png(size, **kw):
        buf = io.BytesIO()
        Image.new("RGB", size, (90, 20, 20)).save(buf, format="PNG", **kw)
        return buf.getvalue()

    frames = io.BytesIO()
    Image.new("RGB", (300, 300)).save(frames, format="GIF", save_all=True,
                                      append_images=[Image.new("RGB", (300, 300), (9, 9, 9))])
    cases = [b"", b"just some text", png((100, 80)), frames.getvalue(), png((400, 400))[:200]]
    reasons = []
    for data in cases:
        with pytest.raises(ImageRejected) as err:
            load_image(data, name="x.png")
        reasons.append(err.value.reason)
    with pytest.raises(ImageRejected) as err:
        load_image(png((400, 400)), max_pixels=1000)
    reasons.append(err.value.reason)
    for reason in reasons:
        assert reason_text(reason, "de") != reason, f"no checklist key matches {reason!r}"
