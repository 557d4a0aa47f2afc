"""Artifact key layout. Everything of one user lives under ``users/<id>/`` so ``/forget`` is one prefix delete.

Guild-owned kit and style concepts live under ``guilds/<id>/``.
"""

from __future__ import annotations


def _id(value: int | str) -> str:
    s = str(int(value))  # ids are integers; refusing anything else keeps keys predictable
    return s


def user_prefix(user_id: int) -> str:
    return f"users/{_id(user_id)}/"


def prefixed_keys(raw: object, prefix: str) -> list[str]:
    """The keys among ``raw`` (a list from an event, or None) that lie under ``prefix`` (no ``..`` segments)."""
    items = raw if isinstance(raw, list | tuple) else []
    return [k for k in items if isinstance(k, str) and k.startswith(prefix) and ".." not in k.split("/")]


def own_keys(raw: object, user_id: int) -> list[str]:
    """The keys among ``raw`` that lie under ``users/<user_id>/``: whoever acts on a user's behalf (attach,
    deliver, delete) never touches another user's files."""
    return prefixed_keys(raw, user_prefix(user_id))


def guild_prefix(guild_id: int) -> str:
    return f"guilds/{_id(guild_id)}/"


def photo_key(user_id: int, concept_id: int, index: int) -> str:
    return f"{user_prefix(user_id)}photos/{_id(concept_id)}/{index:02d}.png"


def photos_prefix(user_id: int, concept_id: int) -> str:
    return f"{user_prefix(user_id)}photos/{_id(concept_id)}/"


def mask_key(photo: str) -> str:
    """The face mask stored beside a training crop (used for the face-masked loss)."""
    return photo.rsplit(".", 1)[0] + "-mask.png"


def concept_key(user_id: int, concept_id: int) -> str:
    return f"{user_prefix(user_id)}concepts/{_id(concept_id)}.safetensors"


def reference_key(user_id: int, concept_id: int) -> str:
    """The face's reference identity (mean selfie descriptor, 1024 B) that the worker's best-of-N reads."""
    return f"{user_prefix(user_id)}references/{_id(concept_id)}.bin"


def instant_key(user_id: int, concept_id: int) -> str:
    """The face embedding (512 float32) of the instant face, written by the worker when the face's training starts."""
    return f"{user_prefix(user_id)}instant/{_id(concept_id)}.f32"


def checkpoint_prefix(user_id: int, concept_id: int) -> str:
    return f"{user_prefix(user_id)}checkpoints/{_id(concept_id)}/"


def output_key(user_id: int, job_id: int, index: int, ext: str = "png") -> str:
    return f"{user_prefix(user_id)}outputs/{_id(job_id)}/{index}.{ext}"


def outputs_prefix(user_id: int, job_id: int) -> str:
    return f"{user_prefix(user_id)}outputs/{_id(job_id)}/"


def guild_concept_key(guild_id: int, concept_id: int) -> str:
    return f"{guild_prefix(guild_id)}concepts/{_id(concept_id)}.safetensors"


def guild_photos_prefix(guild_id: int, concept_id: int) -> str:
    return f"{guild_prefix(guild_id)}photos/{_id(concept_id)}/"


def guild_photo_key(guild_id: int, concept_id: int, index: int) -> str:
    return f"{guild_photos_prefix(guild_id, concept_id)}{index:02d}.png"


def guild_checkpoint_prefix(guild_id: int, concept_id: int) -> str:
    return f"{guild_prefix(guild_id)}checkpoints/{_id(concept_id)}/"


def preview_key(guild_id: int, kit_id: int) -> str:
    return f"{guild_prefix(guild_id)}previews/{_id(kit_id)}.png"


def class_images_prefix(digest: str) -> str:
    """DreamBooth's shared class images (``training.dreambooth_prior``): the base model's own drawings of a class
    word, no user's data, so under no user's prefix and reused by everyone. ``digest`` is a hex string."""
    if not digest or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("class-image digest must be lowercase hex")
    return f"shared/class-images/{digest}/"
