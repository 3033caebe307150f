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

    base_weights: str = Field(
        default="imagenet",
        description=(
            "Xception base weights: `imagenet` (downloaded by Keras), a path to a "
            "`.weights.h5`/`.h5` file, or `none` for random weights (tests only)."
        ),
    )
    model_path: Path = Field(
        default=DEFAULT_MODEL_PATH,
        description="Trained model: an artifact folder (manifest + head weights) or a .keras file.",
    )
    inference_backend: Literal["auto", "openvino", "tensorflow"] = Field(
        default="auto",
        description="Engine that runs the network; `auto` picks OpenVINO when it is installed.",
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
