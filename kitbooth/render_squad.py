"""The squad photo's result message (issue 15), as plain data like every result in ``kitbooth.render``: the one
picture attached as stored, who is in it, and the Delete button any of them may press. Torch-free."""

from __future__ import annotations

from gpu_worker.contract import squad_delete_id
from kitbooth.i18n import ENGLISH, fmt_number, translate
from kitbooth.render import ButtonSpec, Outgoing, clip, escape_markdown, image_name


def squad_result(*, job_id: int, member_ids: list[int], prompt: str, seed: int | None, png: bytes | None,
                 nsfw: bool = False, seconds: float | None = None, locale: str = ENGLISH) -> Outgoing:
    t = translate
    who = " ".join(f"<@{int(m)}>" for m in member_ids)
    meta = " · ".join(x for x in (t("result.seed", locale, seed=str(seed)) if seed is not None else "",
                                  t("result.seconds", locale, seconds=fmt_number(seconds, locale, digits=1))
                                  if seconds is not None else "") if x)
    lines = [f"**{escape_markdown(clip(prompt, 300))}**", t("squad.result_members", locale, members=who)]
    lines += [meta] if meta else []
    if nsfw:
        lines.append(t("squad.result_hidden", locale))
    if png is None:
        return Outgoing("\n".join(lines))
    return Outgoing("\n".join(lines), files=[(image_name(job_id, 0), png)],
                    buttons=[ButtonSpec(t("button.delete", locale), squad_delete_id(job_id), "danger", 0)])
