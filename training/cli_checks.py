"""The CLI's checks on what it is given: one rule per class of bad input, used by every subcommand. Torch-free.

Each check raises ``BadArgument`` (an ``InvalidInput``) with one sentence; ``kitbooth.cli.main`` prints it as one
line and exits 1, and every subcommand runs its checks before it reads a photo, loads a model or writes a file.
Paths are judged by ``os.stat`` alone, never opened, so a FIFO or a device cannot make the CLI hang. Numbers are
checked against ``kitbooth.limits``. Argument-parser errors (a missing option, ``--steps abc``) become one line
and exit 1 as well (``one_line_errors``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from kitbooth import limits
from kitbooth.errors import InvalidInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
EXIT_BAD_INPUT = 1
EVAL_IMAGES_MAX = 64  # kitbooth eval --k / --prompts: a local measurement, not a member's request


class BadArgument(InvalidInput):
    """A command-line argument that cannot be used."""


def one_line_errors(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """argparse's own refusals as ``kitbooth COMMAND: ...``, one line, exit 1 (not usage + exit 2)."""
    def error(message: str) -> NoReturn:
        print(f"kitbooth {command}: {message} (see kitbooth {command} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    parser.error = error  # type: ignore[method-assign]
    return parser


def first(checks: Callable[[argparse.Namespace], None], command: Callable[..., int]) -> Callable[..., int]:
    """``command`` behind its argument checks, which run before the command's heavy imports and any work."""
    def run(args: argparse.Namespace, settings: Any) -> int:
        checks(args)
        return command(args, settings)

    run.__name__ = getattr(command, "__name__", "command")
    return run


# --- paths -------------------------------------------------------------------------------------------------
def _stat(path: Path, option: str) -> os.stat_result | None:
    """``os.stat`` (follows links) or None when nothing is there; a path through a file is refused."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise BadArgument(f"{option} {path}: part of that path is a file, not a folder — give a path inside a "
                          "folder.") from None
    except OSError as exc:
        raise BadArgument(f"{option} {path}: cannot be read ({exc.strerror or 'unreadable'}).") from None


def _what(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a file" if stat.S_ISREG(mode) else "not a regular file"


def input_file(path: str | Path, option: str) -> Path:
    """An existing regular file to read."""
    p = Path(path)
    st = _stat(p, option)
    if st is None:
        raise BadArgument(f"{option} {p}: no such file — check the path.")
    if not stat.S_ISREG(st.st_mode):
        raise BadArgument(f"{option} {p} is {_what(st)}, not a file — give the path of a file.")
    return p


def input_dir(path: str | Path, option: str) -> Path:
    """An existing folder to read."""
    p = Path(path)
    st = _stat(p, option)
    if st is None:
        raise BadArgument(f"{option} {p}: no such folder — check the path.")
    if not stat.S_ISDIR(st.st_mode):
        raise BadArgument(f"{option} {p} is {_what(st)}, not a folder — give the path of a folder.")
    return p


def output_file(path: str | Path, option: str) -> Path:
    """A file to (over)write: nothing there or a regular file, inside a folder (or a path a folder can go)."""
    p = Path(path)
    st = _stat(p, option)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise BadArgument(f"{option} {p} is {_what(st)}; a file goes there — give a file name.")
    parent = _stat(p.parent, option)
    if parent is not None and not stat.S_ISDIR(parent.st_mode):
        raise BadArgument(f"{option} {p}: {p.parent} is {_what(parent)}, not a folder — give a path inside a "
                          "folder.")
    return p


def output_dir(path: str | Path, option: str) -> Path:
    """A folder to write into: nothing there yet, or a folder."""
    p = Path(path)
    st = _stat(p, option)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise BadArgument(f"{option} {p} is {_what(st)}; a folder goes there — give a folder path.")
    if st is None:
        _parents_are_folders(p, option)
    return p


def _parents_are_folders(p: Path, option: str) -> None:
    for parent in p.parents:
        st = _stat(parent, option)
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise BadArgument(f"{option} {p}: {parent} is {_what(st)}, not a folder — give a path inside a "
                                  "folder.")
            return


def base_model(ref: str | None, option: str = "--base-model") -> str | None:
    """A hub id as it is; a local model must be a folder (diffusers) or a file (single checkpoint)."""
    if not ref:
        return ref
    st = _stat(Path(ref), option)
    if st is None:
        if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or ref.endswith((".safetensors", ".ckpt")):
            raise BadArgument(f"{option} {ref}: no such model folder or file — check the path, or give a hub id.")
        return ref
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise BadArgument(f"{option} {ref} is {_what(st)} — give a model folder, a model file or a hub id.")
    return ref


# --- numbers -----------------------------------------------------------------------------------------------
def integer(value: int | None, option: str, lo: int, hi: int, *, multiple: int = 1) -> int | None:
    """None (the default) or a whole number in lo..hi (a multiple of ``multiple``)."""
    if value is None:
        return None
    if not lo <= value <= hi or value % multiple:
        step = f" in steps of {multiple}" if multiple > 1 else ""
        raise BadArgument(f"{option} {value} is out of range — use {lo} to {hi}{step}.")
    return value


def real(value: float | None, option: str, lo: float, hi: float) -> float | None:
    """None or a finite number in lo..hi."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise BadArgument(f"{option} {value} is not a finite number — use {lo:g} to {hi:g}.")
    if not lo <= value <= hi:
        raise BadArgument(f"{option} {value:g} is out of range — use {lo:g} to {hi:g}.")
    return value


def side(value: int | None, option: str) -> int | None:
    return integer(value, option, limits.SIDE_MIN, limits.SIDE_MAX, multiple=limits.SIDE_MULTIPLE)


def seed(value: int | None, option: str = "--seed") -> int | None:
    return integer(value, option, 0, limits.SEED_MAX)


def denoise_steps(value: int | None, option: str = "--steps") -> int | None:
    return integer(value, option, limits.STEPS_MIN, limits.STEPS_MAX)


def guidance(value: float | None, option: str = "--guidance") -> float | None:
    return real(value, option, 0.0, limits.GUIDANCE_MAX)


def weight(value: float | None, option: str = "--weight") -> float | None:
    return real(value, option, -limits.CONCEPT_WEIGHT_MAX, limits.CONCEPT_WEIGHT_MAX)


def trigger_word(value: str | None, option: str = "--trigger") -> str | None:
    """None or one word a prompt can hold (letters, digits, ``-``, ``_``; up to 40)."""
    if value is not None and not re.fullmatch(r"[\w-]{1,40}", value):
        raise BadArgument(f"{option} must be one word of letters, digits, - or _ (up to 40) — pick another.")
    return value


# --- photos ------------------------------------------------------------------------------------------------
def photo_files(folder: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(filename, bytes) of the photos in ``folder`` by name (not recursive), and the names skipped: other
    extensions, and anything that is not a regular file (never opened)."""
    photos: list[tuple[str, bytes]] = []
    skipped: list[str] = []
    for p in sorted(folder.iterdir()):
        try:
            st = os.stat(p)
        except OSError:
            skipped.append(p.name)
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode) or p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(p.name)
            continue
        photos.append((p.name, p.read_bytes()))
    return photos, skipped


def skipped_line(skipped: list[str]) -> str:
    shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
    return (f"skipped {len(skipped)} file{'s' * (len(skipped) != 1)} that {'are' if len(skipped) != 1 else 'is'}"
            f" not a photo type ({', '.join(IMAGE_SUFFIXES)}): {shown}")


def file_report(report) -> str:
    """The photo checklist with each photo named by its file ("IMG_0003.jpg: no face found"), not "photo 3"."""
    names = {v.index: v.filename for v in report.verdicts}

    def named(text: str) -> str:
        return re.sub(r"\bphoto (\d+)\b", lambda m: names.get(int(m[1]), m[0]), text)

    lines = []
    for v in report.verdicts:
        reason = v.reason.split(": ", 1)[1] if ": " in v.reason else v.reason
        lines.append(f"{'✅' if v.accepted else '❌'} {v.filename}: {named(reason)}")
    lines.append(report.checklist().splitlines()[-1])
    return "\n".join(lines)
