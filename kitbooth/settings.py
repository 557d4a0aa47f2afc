"""Typed settings for every KitBooth process.

Built once in an entry point (``load_settings()``) and passed down; nothing deeper reads ``os.environ``.
Every field maps to an environment variable ``KITBOOTH_<FIELD>`` and may also come from a ``.env`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KITBOOTH_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- shared ---
    data_dir: Path = Field(Path("data"), description="Root for the database and the local artifact store.")
    database_path: Path | None = Field(None, description="SQLite file; default <data_dir>/kitbooth.db.")
    artifact_dir: Path | None = Field(None, description="Local artifact store root; default <data_dir>/artifacts.")
    store_url: str | None = Field(
        None, description="Artifact store: s3://bucket/prefix (MinIO, AWS S3, R2) or file:///path; unset: artifact_dir."
    )
    s3_endpoint: str | None = Field(
        None, description="S3 endpoint URL, e.g. http://minio:9000 or https://<account>.r2.cloudflarestorage.com; "
        "unset: AWS."
    )
    s3_region: str = Field("us-east-1", description="S3 region (R2: auto).")
    s3_access_key_id: str | None = Field(None, description="S3 access key id; unset: the AWS_* / instance credentials.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key (never logged).")
    s3_path_style: bool = Field(True, description="Path-style URLs (endpoint/bucket/key); false: bucket.endpoint/key.")
    s3_timeout_s: float = Field(30.0, gt=0, description="Longest one S3 request may take, body included.")
    s3_connect_timeout_s: float = Field(5.0, gt=0, description="Longest an S3 connection may take to open.")
    s3_retries: int = Field(3, ge=0, description="Retries of a failed S3 request (5xx, dropped connection, timeout).")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis DSN for the arq queue and events.")
    queue_name: str = Field("kitbooth:queue", description="arq queue name shared by bot and workers.")
    events_stream: str = Field("kitbooth:events", description="Redis stream the worker writes events to.")
    log_level: str = Field("INFO", description="Logging level of the entry points.")
    health_port: int | None = Field(
        None, description="Serve /healthz and /readyz on this port when set (bot and worker; `kitbooth up` offsets it)."
    )

    # --- bot ---
    discord_token: SecretStr | None = Field(None, description="Bot token from the Discord developer portal.")
    dev_guild_id: int | None = Field(None, description="Sync slash commands to this guild only (instant).")
    daily_quota: int = Field(50, ge=0, description="Default images per user per day (guilds may override).")
    max_upload_bytes: int = Field(10_000_000, ge=1, description="Largest photo or concept file accepted.")
    base_hidden_size: int = Field(
        768, ge=1, description="Text-encoder width of the base model (768 for SD 1.5); imports are checked against it."
    )
    rate_limit_s: float = Field(3.0, ge=0, description="Seconds a member waits between two image requests (0: none).")
    squad_invite_timeout_s: float = Field(
        600.0, gt=0, description="Seconds the members named in a /squad have to approve it; then it is cancelled."
    )
    generate_steps: int | None = Field(None, ge=1, description="Denoising steps of every generate job; None: 25.")
    generate_side: int | None = Field(
        None, ge=64, description="Width and height of every generate job (e.g. 64 on the tiny model); None: the shape's."
    )
    train_steps: int | None = Field(None, ge=1, description="Training steps of every concept; None: the kind's default.")
    train_resolution: int | None = Field(None, ge=64, description="Training resolution; None: the trainer's default.")

    # --- worker ---
    base_model: str = Field(DEFAULT_BASE_MODEL, description="Hub id, local diffusers folder or .safetensors.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device of the worker.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Weights dtype; auto = fp16 on CUDA, fp32 on CPU."
    )
    max_batch: int = Field(4, ge=1, le=16, description="Most generate requests run in one pipeline call.")
    slice_seconds: float = Field(20.0, gt=0, description="Longest training slice before yielding the GPU.")
    poll_delay: float = Field(0.01, gt=0, description="arq worker poll delay in seconds.")
    safety_checker: bool = Field(True, description="Run the SD safety checker on generated images.")
    safety_checker_model: str | None = Field(
        None, description="Hub id or folder of the safety checker; default: the base model's own."
    )
    upscaler_model: str | None = Field(
        None, description="Optional x2 latent upscaler, e.g. stabilityai/sd-x2-latent-upscaler."
    )
    instant_face_adapter: str | None = Field(
        None, description="IP-Adapter FaceID (SD 1.5) as <hub repo or folder>/<file>, e.g. "
        "h94/IP-Adapter-FaceID/ip-adapter-faceid_sd15.bin; unset: no instant face (non-commercial licence)."
    )
    instant_face_embedder: str = Field(
        "buffalo_l", description="insightface model pack that embeds the face for the instant face (non-commercial)."
    )
    metrics_port: int | None = Field(None, description="Serve Prometheus metrics on this port when set.")
    offline: bool = Field(False, description="Never touch the network for models (HF_HUB_OFFLINE).")
    slice_steps: int | None = Field(
        None, ge=1, description="Most training steps per slice (besides slice_seconds); makes slicing deterministic."
    )
    job_timeout_s: float = Field(
        300.0, gt=0, description="Longest a worker job may run; a killed worker's job is retried soon after it."
    )
    batch_gather_s: float = Field(0.25, ge=0, description="How long a batch waits for requests still being prepared.")
    ti_slots: int = Field(32, ge=1, description="Token slots reserved on the resident pipeline for TI concepts.")
    lora_cache: int = Field(8, ge=1, description="LoRA adapters kept resident on the pipeline (LRU).")
    concept_cache: int = Field(64, ge=1, description="Parsed concept files kept in worker memory (LRU).")
    sample_steps: int = Field(20, ge=1, description="Denoising steps of the sample images posted after training.")
    train_samples: int = Field(2, ge=0, le=4, description="Sample images posted when a training finishes.")
    dreambooth_class_images: int = Field(
        100, ge=1, le=1000, description="DreamBooth's prior-preservation images per base model and class word."
    )
    dreambooth_class_steps: int = Field(25, ge=1, le=150, description="Denoising steps of each DreamBooth class image.")
    retry_defer_s: float = Field(
        2.0, ge=0, description="First delay before a job hit by a transient error runs again (doubles per try)."
    )

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @property
    def db_path(self) -> Path:
        return self.database_path or self.data_dir / "kitbooth.db"

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"


def redacted_dsn(dsn: str) -> str:
    """A DSN fit for messages and logs: the password (if any) replaced by ***."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return dsn


def redis_unreachable(dsn: str) -> str:
    return (f"Cannot reach Redis at {redacted_dsn(dsn)}: start redis-server (or `docker compose up redis`) "
            "or set KITBOOTH_REDIS_URL.")


def load_settings(**overrides: object) -> Settings:
    """The one place settings are read from the environment and ``.env``."""
    return Settings(**overrides)
