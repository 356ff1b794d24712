"""The run config's defaults: pyproject.toml's ``[tool.flwr.app.config]``, read where the app is installed."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any

APP_ROOT = Path(__file__).resolve().parents[2]  # the app folder (a checkout, or the FAB Flower unpacks)


@functools.cache
def default_run_config() -> dict[str, Any]:
    """Every key's default, or {} where the app folder holds no pyproject.toml (callers then assume nothing)."""
    pyproject = APP_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    return dict(tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"])
