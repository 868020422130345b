"""Infrastructure settings: one pydantic-settings object, env prefix SEKE_, optional .env.

Secrets are SecretStr so they never appear in reprs, logs or run snapshots
(`Settings.public_snapshot()` is what runs store).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.redact import redact_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEKE_", env_file=".env", extra="ignore")

    state_dir: Path = Field(
        default=Path(".seke"),
        description="Where the embedded PostgreSQL data, the local object store and exports live.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://… of a running server; empty starts the embedded PostgreSQL.",
    )
    store_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix or file:///dir; empty uses <state_dir>/store.",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto); empty for AWS.")
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    s3_access_key_id: SecretStr | None = Field(default=None, description="S3 access key; empty uses boto3's chain.")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")

    vllm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint (https://api.openai.com/v1, a vLLM server…); empty starts the simulator.",
    )
    vllm_model: str = Field(default="gpt-4o", description="Model name sent to the endpoint.")
    vllm_simulated: bool = Field(
        default=False,
        description="The endpoint is the offline simulator (a rehearsal): runs, exports and reports say so.",
    )
    vllm_api_key: SecretStr = Field(default=SecretStr("not-needed"), description="API key of the endpoint.")
    requests_per_minute: int | None = Field(
        default=None, gt=0, description="The endpoint's request rate cap, shared by all workers of a run (unset: see tasks/vllm.py HOSTED_RATE_LIMITS)."
    )
    tokens_per_minute: int | None = Field(
        default=None, gt=0, description="The endpoint's token rate cap, shared by all workers of a run (unset: see tasks/vllm.py HOSTED_RATE_LIMITS)."
    )
    vllm_service_tier: Literal["auto", "default", "flex", "priority"] | None = Field(
        default=None,
        description="OpenAI's service_tier, sent when set: flex is billed at Batch API rates (about half) with slower, "
        "interruptible answers, for the models that offer it; set SEKE_PRICE_* to its rates.",
    )
    vllm_max_attempts: int = Field(default=6, ge=1, description="Attempts per call on transient failures (429, 5xx, timeouts).")
    vllm_backoff_base_s: float = Field(default=1.0, gt=0, description="First retry backoff ceiling; doubles per attempt.")
    concurrency: int = Field(default=32, gt=0, le=512, description="Images annotated at once.")
    write_buffer_rows: int = Field(
        default=256, ge=1, description="Annotate: most call rows held uncommitted at once (a SIGKILL may cost these calls again)."
    )
    write_buffer_ms: float = Field(
        default=100.0, gt=0, description="Annotate: most milliseconds a call row waits before its batch is committed."
    )
    price_in_per_mtok: float = Field(default=2.5, ge=0, description="USD per million prompt tokens (default: GPT-4o).")
    price_out_per_mtok: float = Field(default=10.0, ge=0, description="USD per million output tokens (default: GPT-4o).")
    price_cached_in_per_mtok: float | None = Field(
        default=None, ge=0,
        description="USD per million cached prompt tokens (default: the input price times the model's cached share, tasks/prices.py).",
    )
    prefect_concurrency_limit: str | None = Field(
        default=None,
        description="Name of a Prefect global concurrency limit each image holds a slot of: a coarse cap across processes.",
    )

    @field_validator("database_url", mode="before")
    @classmethod
    def _psycopg_driver(cls, value: object) -> object:
        """Accept postgres:// and postgresql:// and use the psycopg 3 driver."""
        if isinstance(value, str) and value:
            for prefix in ("postgres://", "postgresql://"):
                if value.startswith(prefix):
                    return "postgresql+psycopg://" + value[len(prefix) :]
        return value or None

    @cached_property
    def resolved_state_dir(self) -> Path:
        return self.state_dir.expanduser().resolve()

    def public_snapshot(self) -> dict[str, object]:
        """The settings as stored with a run: secrets and credentials left out."""
        data = self.model_dump(mode="json", exclude={"database_url", "s3_access_key_id", "s3_secret_access_key", "vllm_api_key"})
        data["database"] = "external" if self.database_url else "embedded"
        for key in ("vllm_base_url", "store_url", "s3_endpoint_url"):
            if data[key]:
                data[key] = redact_url(data[key])
        return data


def get_settings() -> Settings:
    return Settings()
