"""The one place configuration is read from: environment variables (and a `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Where the embedded defaults keep their files: SQLite, uploads, the broker's folders.
    data_dir: Path = Field(default=Path("var"))
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///DATA_DIR/intel.db"
    )
    redis_url: str | None = Field(
        default=None, description="Celery broker; default: the embedded filesystem broker"
    )
    storage_url: str | None = Field(
        default=None, description="file:///path or s3://bucket/prefix; default DATA_DIR/uploads"
    )
    database_pool_size: int = Field(
        default=10, ge=1, description="Postgres connections each process keeps open"
    )
    database_max_overflow: int = Field(
        default=10, ge=0, description="Extra Postgres connections a process may open at peaks"
    )
    database_pool_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Wait for a free connection before answering 503"
    )
    database_silent_client_seconds: float = Field(
        default=10.0,
        ge=1,
        description="Postgres ends a session idle in a transaction (or not acknowledging) this "
        "long, releasing its locks: a partitioned host cannot stall the others for longer",
    )
    host: str = "127.0.0.1"
    port: int = 9696

    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_image_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_images_per_job: int = Field(default=10_000, ge=1)
    max_zip_entries: int = Field(default=20_000, ge=1)
    max_zip_uncompressed_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    max_zip_ratio: float = Field(default=200.0, ge=1)
    predict_timeout_seconds: float = Field(default=30.0, gt=0)
    keep_uploads: bool = False
    requeue_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A claimed item's lease: a live worker extends it with each heartbeat; "
        "past it the reconciler takes the item back",
    )
    max_in_flight_per_tenant: int = Field(
        default=0,
        ge=0,
        description="Items one tenant may have running at once across all workers; 0: no cap",
    )
    batch_wait_ms: int = Field(default=20, ge=0, le=5000)
    heartbeat_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often each worker writes its heartbeat"
    )
    worker_stale_seconds: float = Field(
        default=30.0, gt=0, description="A worker not heard from this long counts as dead"
    )
    default_model_version: str = Field(
        default="",
        description="The model version new jobs get while a live worker serves it; "
        "empty: the newest version live workers serve (GET /models)",
    )
    max_item_attempts: int = Field(
        default=3,
        ge=1,
        description="Claims of one item (its worker died or timed out each time) before it fails",
    )
    decode_timeout_seconds: float = Field(
        default=60.0, gt=0, description="One image's fetch and decode; past it the item fails"
    )
    task_seconds_per_image: float = Field(
        default=2.0,
        gt=0,
        description="Sizes a classify task's soft time limit (and, 30 s later, its hard one)",
    )

    auth_enabled: bool = Field(
        default=False,
        description="Require `Authorization: Bearer <key>`; off only in the embedded default",
    )
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="Jobs each API key may create per minute; 0: no limit"
    )
    rate_limit_burst: int = Field(
        default=60, ge=1, description="Jobs a key may create at once before the rate applies"
    )
    idempotency_ttl_seconds: float = Field(
        default=86_400, ge=86_400, description="How long an Idempotency-Key is remembered"
    )
    retention_seconds: float = Field(
        default=7 * 86_400,
        gt=0,
        description="Finished jobs, their items and files are deleted this long after they end",
    )
    orphan_grace_seconds: float = Field(
        default=3_600,
        gt=0,
        description="Stored files with no job are swept once they are this old",
    )
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    max_form_field_bytes: int = Field(default=64 * 1024, ge=1)
    request_header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A request's headers must arrive within this"
    )
    request_body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A body's first allowance; each chunk adds its size over the minimum rate",
    )
    request_body_min_bytes_per_second: float = Field(
        default=16 * 1024, gt=0, description="The slowest upload rate a body is allowed"
    )
    access_log: bool = Field(
        default=False, description="Log a line per HTTP request (`--access-log` on api and serve)"
    )
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    webhook_secrets: str = Field(
        default="", description="Comma-separated whsec_ secrets; every one signs each event"
    )
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_allowed_networks: str = Field(
        default="", description="Comma-separated CIDRs exempt from the private-address guard"
    )
    webhook_progress_interval_seconds: float = Field(default=10.0, gt=0)
    input_allowed_networks: str = Field(
        default="",
        description="Networks an input URL may resolve into besides public addresses "
        "(comma-separated CIDRs)",
    )
    input_allowed_buckets: str = Field(
        default="",
        description="Buckets s3:// inputs may name, read with the service's own credentials "
        "(comma-separated); empty: no s3:// inputs",
    )

    base_weights: str = Field(
        default="imagenet",
        description=(
            "Xception base weights, needed only to train, export or run "
            "INFERENCE_PRECISION=fp32: `imagenet` (downloaded by Keras), a path to a "
            "`.weights.h5`/`.h5` file, or `none` for random weights (tests only)."
        ),
    )
    model_path: Path = Field(
        default=DEFAULT_MODEL_PATH,
        description=(
            "Trained model: a model folder (the shipped one carries its INT8 OpenVINO form) "
            "or a .keras file."
        ),
    )
    inference_backend: Literal["auto", "openvino", "tensorflow"] = Field(
        default="auto",
        description="Engine that runs the network; `auto` picks OpenVINO when it is installed.",
    )
    inference_precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description=(
            "auto/int8: the model's shipped INT8 form (OpenVINO only); fp32: the reference "
            "network, built with TensorFlow from BASE_WEIGHTS"
        ),
    )
    inference_batch_size: int = Field(default=16, ge=1, le=256)
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="Images with more pixels than this are refused before decoding.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "intel-classifier",
        description="Where base-network features computed for training are cached.",
    )
    decode_workers: int = Field(default=2, ge=1, le=64)
    worker_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="Lower a worker's CPU priority so a colocated API stays responsive",
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'intel.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "uploads").resolve().as_uri()

    @property
    def webhook_secret_list(self) -> list[str]:
        return [s.strip() for s in self.webhook_secrets.split(",") if s.strip()]

    @property
    def webhook_retry_delays(self) -> list[float]:
        return [float(s) for s in self.webhook_retry_schedule.split(",") if s.strip()]

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
