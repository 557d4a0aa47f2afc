"""The bot's Prometheus metrics, served at /metrics on the health port (``KITBOOTH_HEALTH_PORT``).

The bot's install has no prometheus-client, and three families need none: the text exposition format is
written here. ``kitbooth_bot_commands_total{command,outcome}`` counts slash commands (``ok``; ``refused``: a
``UserFacingError`` reply, e.g. a quota or a bad input; ``error``: an incident), and
``kitbooth_queue_depth`` is read from Redis (one ZCARD) at each scrape.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class BotMetrics:
    def __init__(self) -> None:
        self.commands: Counter[tuple[str, str]] = Counter()

    def command(self, name: str, outcome: str) -> None:
        self.commands[(name, outcome)] += 1

    async def render(self, services: Any) -> str:
        lines = ["# HELP kitbooth_bot_commands_total Slash commands handled, by outcome (ok, refused, error).",
                 "# TYPE kitbooth_bot_commands_total counter"]
        for (name, outcome), n in sorted(self.commands.items()):
            lines.append(f'kitbooth_bot_commands_total{{command="{_label(name)}",outcome="{outcome}"}} {n}')
        refused = sum(n for (_c, o), n in self.commands.items() if o == "refused")
        lines += ["# HELP kitbooth_bot_refusals_total Commands answered with a refusal (quota, input, permission).",
                  "# TYPE kitbooth_bot_refusals_total counter", f"kitbooth_bot_refusals_total {refused}"]
        if services is not None:
            depth = await services.arq.zcard(services.settings.queue_name)
            lines += ["# HELP kitbooth_queue_depth Jobs waiting in the arq queue.", "# TYPE kitbooth_queue_depth gauge",
                      f"kitbooth_queue_depth {depth}"]
        return "\n".join(lines) + "\n"
