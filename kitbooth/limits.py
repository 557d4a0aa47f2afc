"""Every limit on what a member may ask for, defined once. Standard library only.

The bot's slash-command ranges, the bot's checks, the worker's payload checks, the concept-file validator and
the CLI all read these names; ``gpu_worker.contract`` re-exports them as part of the bot <-> worker contract.
"""

from __future__ import annotations

from typing import Final

from kitbooth.errors import InvalidInput

PROMPT_CHARS: Final = 1000          # prompt (and each prompt part: kit/style words, negative prompt)
COUNT_MIN: Final = 1                # images per /generate
COUNT_MAX: Final = 4
CANDIDATES_MAX: Final = 8           # best-of-N: images generated per /generate (2 × COUNT_MAX)
BEST_OF_MAX: Final = 4              # best-of-N: candidates per image shown (a server setting)
STEPS_MIN: Final = 1                # denoising steps per image
STEPS_MAX: Final = 100
SIDE_MIN: Final = 64                # image width/height in pixels, multiples of SIDE_MULTIPLE
SIDE_MAX: Final = 1024
SIDE_MULTIPLE: Final = 8
GUIDANCE_MAX: Final = 30.0
SEED_MAX: Final = 2**31 - 1
TRAIN_STEPS_MAX: Final = 5000       # training steps of one concept
TRAIN_BATCH_MAX: Final = 16          # images per training step (the CLI's --batch-size)
CONCEPT_WEIGHT_MAX: Final = 4.0     # |weight| of one concept in a composition (the CLI's --weight)
TI_VECTORS_MAX: Final = 16          # vectors per textual-inversion token (embedding rows)
LORA_RANK_MAX: Final = 256          # LoRA/LoCon rank of a concept file
CONCEPT_FILE_BYTES: Final = 10 * 1024 * 1024  # a concept file the bot imports or the worker loads
DELTA_FILE_BYTES: Final = 160 * 1024 * 1024  # a DreamBooth delta trained here (SD 1.5 at rank 32: ~68 MB), never uploaded
NAME_CHARS: Final = 40              # kit/style names
DESCRIPTION_CHARS: Final = 300      # kit/style prompt words
SQUAD_INVITEES_MAX: Final = 4       # members a /squad names besides the requester (1..4)


def check_picture(*, width: int, height: int, steps: int, guidance: float) -> None:
    """The one check of a picture's size, steps and guidance: the worker's payload check and the library's
    ``GenerationRequest`` (CLI) both call it, so they refuse the same values with the same sentence."""
    for side in (width, height):
        if not SIDE_MIN <= side <= SIDE_MAX or side % SIDE_MULTIPLE:
            raise InvalidInput(f"Image sides must be multiples of {SIDE_MULTIPLE} between {SIDE_MIN} and {SIDE_MAX}.",
                               key="refusal.picture_sides",
                               fields={"multiple": SIDE_MULTIPLE, "min": SIDE_MIN, "max": SIDE_MAX})
    if not STEPS_MIN <= steps <= STEPS_MAX:
        raise InvalidInput(f"Steps must be between {STEPS_MIN} and {STEPS_MAX}.", key="refusal.picture_steps",
                           fields={"min": STEPS_MIN, "max": STEPS_MAX})
    if not 0.0 <= guidance <= GUIDANCE_MAX:
        raise InvalidInput(f"Guidance must be between 0 and {GUIDANCE_MAX:g}.", key="refusal.picture_guidance",
                           fields={"max": f"{GUIDANCE_MAX:g}"})


def check_squad_size(invitees: int) -> None:
    """The one check of a squad's size: the bot (before inviting) and the worker (the payload) both call it."""
    if not 1 <= invitees <= SQUAD_INVITEES_MAX:
        raise InvalidInput(f"Name 1 to {SQUAD_INVITEES_MAX} other members for a squad photo.",
                           key="refusal.squad_size", fields={"limit": SQUAD_INVITEES_MAX})
