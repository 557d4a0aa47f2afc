"""What the member sees after an upload: one verdict per photo, the prepared crops, and a checklist that ends
with what to do next. Torch-free; every refusal reason is written here, in the member's words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

MIN_FACE_PHOTOS = 4
MAX_FACE_PHOTOS = 10
MAX_REFERENCE_PHOTOS = 20

OK = "ok"
NO_FACE = "no face found — use a clear, front-facing photo"
TWO_PEOPLE = "two people — crop it to just you"
TOO_SMALL = "face too small — take a closer photo or crop it around your face"
BLURRY = "too blurry — use a sharp, well-lit photo"
DIFFERENT = "looks like a different person from the others"
TOO_MANY = "too many photos — only the first {n} are used"
SAME_AS = "same photo as photo {n} — skipped"


@dataclass(frozen=True)
class PhotoVerdict:
    index: int  # 1-based position in the upload
    filename: str
    accepted: bool
    reason: str  # "photo 3: no face found — ..." or "photo 1: ok"


@dataclass
class PreparedPhoto:
    index: int  # 1-based position in the upload
    image: Image.Image  # RGB, resolution × resolution
    mask: Image.Image | None  # "L", same size, 255 on the face, feathered; None for kits and styles
    # Words describing this photo, without the trigger ("arsenal home kit"), or "" when nothing is known. The
    # trainer appends them to its caption templates for the kind (training.data.expand_captions:
    # "a photo of a {} football kit, arsenal home kit"); a caption holding "{}" or "{trigger}" is used as is.
    caption: str


@dataclass
class PhotoReport:
    verdicts: list[PhotoVerdict]
    photos: list[PreparedPhoto]
    min_photos: int = MIN_FACE_PHOTOS
    kind: Literal["face", "kit", "style"] = "face"
    descriptors: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # index → 128-d, faces only

    def ok(self, min_photos: int | None = None) -> bool:
        """Enough photos were accepted to train (``min_photos`` defaults to the report's own minimum)."""
        return len(self.photos) >= (self.min_photos if min_photos is None else min_photos)

    def checklist(self) -> str:
        """Short multi-line text: ✅/❌ per photo, then one line that says what to do next."""
        lines = [f"{'✅' if v.accepted else '❌'} {v.reason}" for v in self.verdicts]
        n = len(self.photos)
        if self.ok():
            lines.append(f"{n} photo{'s' if n != 1 else ''} ready — training can start.")
        elif self.kind == "face":
            lines.append(
                f"Only {n} usable photo{'s' if n != 1 else ''} — send at least {self.min_photos} clear, "
                f"front-facing selfies of just you (up to {MAX_FACE_PHOTOS})."
            )
        else:
            lines.append(f"Only {n} usable photo{'s' if n != 1 else ''} — send at least {self.min_photos}.")
        return "\n".join(lines)


class Verdicts:
    """Verdicts collected in any order, reported in upload order."""

    def __init__(self) -> None:
        self._by_index: dict[int, PhotoVerdict] = {}

    def accept(self, index: int, filename: str) -> None:
        self._by_index[index] = PhotoVerdict(index, filename, True, f"photo {index}: {OK}")

    def refuse(self, index: int, filename: str, reason: str) -> None:
        self._by_index[index] = PhotoVerdict(index, filename, False, f"photo {index}: {reason}")

    def in_order(self) -> list[PhotoVerdict]:
        return [self._by_index[i] for i in sorted(self._by_index)]
