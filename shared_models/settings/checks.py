"""The one way a settings section refuses a value: the key, its value and why, in one line."""

from __future__ import annotations

from typing import Any

from shared_models.config_error import ConfigError


def need(settings: Any, ok: bool, key: str, why: str) -> None:
    """Raise ``ConfigError`` naming ``key`` (hyphenated) and its value unless ``ok``."""
    if not ok:
        raise ConfigError(f"run-config {key} = {getattr(settings, key.replace('-', '_'))!r}: {why}")
