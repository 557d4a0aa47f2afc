"""Prompts and descriptions that draw nothing are refused; descriptions are checked after NFKC like prompts; a
name echoed in a refusal is escaped, mention-free and valid UTF-8. The variants are generated from Python's
Unicode database (every format, separator and control character, combining marks, variation selectors)."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from bot import catalogue, text_checks
from bot.generate_request import validate_prompt
from kitbooth.errors import InvalidInput, NotFound


def _chars(*categories: str) -> list[str]:
    return [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in categories]


FORMAT = _chars("Cf")  # zero-width space/joiners, bidi controls, BOM, soft hyphen, tags...
SPACES = _chars("Zs", "Zl", "Zp") + [c for c in _chars("Cc") if c.isspace()]
CONTROLS = _chars("Cc")
MARKS = _chars("Mn", "Me")  # combining marks; variation selectors are Mn
SELECTORS = [chr(c) for c in (*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0))]
BLANKS = sorted(text_checks.BLANKS)


def _invisible_variants() -> list[str]:
    pools = [FORMAT, SPACES, CONTROLS, MARKS, SELECTORS, BLANKS]
    out = []
    for pool in pools:
        out.append("".join(pool[:: max(1, len(pool) // 40)]))  # a spread of the class
        out += pool[:: max(1, len(pool) // 25)]  # single characters
    mixed = "".join(p[i % len(p)] for i in range(60) for p in pools)
    return [*out, mixed, " \u200b\u200d\ufe0f\u0301\u3164 "]


INVISIBLE = _invisible_variants()


def test_the_generated_variants_cover_every_class():
    assert len(FORMAT) > 150 and len(SPACES) >= 20 and len(MARKS) > 1500 and len(SELECTORS) == 256
    assert all(not text_checks.has_visible(v) for v in INVISIBLE)
    assert text_checks.has_visible("a\u200b") and text_checks.has_visible("é") and text_checks.has_visible("⚽")


async def test_an_invisible_prompt_is_refused(arena):
    for variant in INVISIBLE:
        with pytest.raises(InvalidInput, match="Describe the picture"):
            await validate_prompt(arena.services, arena.alice.id, variant)


async def test_a_prompt_keeps_its_words_and_loses_format_characters(arena):
    got = await validate_prompt(arena.services, arena.alice.id, "\u202ecelebrating\u200b a\u3000goal\u2028 ⚽\ufe0f")
    assert got == "celebrating a goal ⚽\ufe0f"


@pytest.mark.parametrize("variant", INVISIBLE[:: max(1, len(INVISIBLE) // 30)])
def test_an_invisible_description_is_refused(variant):
    with pytest.raises(InvalidInput, match="Describe the"):
        catalogue.validate_description(variant * 3)


@pytest.mark.parametrize("text", [
    "red shirt ＜kb-slot-3＞",  # fullwidth brackets: NFKC turns them into a reserved token
    "red shirt ﹤|endoftext|﹥",
    "navy shorts ＠everyone",  # fullwidth @
])
def test_descriptions_are_checked_after_nfkc(text):
    with pytest.raises(InvalidInput, match="plain words"):
        catalogue.validate_description(text)


@pytest.mark.parametrize("name", [
    "**bold** __under__ ~~strike~~ `code` ||spoiler|| > quote",
    "@everyone <@123> <#456> <:e:789>",
    "\ud83d half a surrogate pair",
    "x" * 39 + "e\u0301\u0301 tail",
    "\u202eevil\u202c\u200bname" * 10,
])
async def test_refusals_escape_the_names_they_echo(arena, name):
    with pytest.raises(NotFound) as err:
        await catalogue.get_entry(arena.services.db, arena.guild.id, name, "kit")
    text = err.value.message
    text.encode("utf-8")  # never broken UTF-8 (a lone surrogate would raise here)
    echoed = text.split("called “", 1)[1].split("”", 1)[0]
    assert "@" not in echoed and "<" not in echoed and "`" not in echoed
    assert not any(unicodedata.category(c) in ("Cf", "Cs", "Cc") for c in echoed)
    for mark in "*_~|>":
        assert all(echoed[i - 1] == "\\" for i, c in enumerate(echoed) if c == mark), echoed
    assert len(echoed.replace("\\", "")) <= 40
    assert not unicodedata.category(echoed.rstrip("…")[-1:] or "a").startswith("M")
