"""Load a run config the way Flower does: pyproject defaults fused with a config file.

``fedemo simulate``, the centralised baseline and the tests all go through
here, so a config means exactly what it means to ``flwr run . --run-config``.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

from flwr.common.config import flatten_dict, fuse_dicts, get_fused_config_from_dir

from shared_models.run_settings import ConfigError, RunSettings


def project_dir() -> Path:
    """The Flower app folder (the repository root holding pyproject.toml)."""
    here = Path(__file__).resolve().parents[1]
    if not (here / "pyproject.toml").is_file():
        raise FileNotFoundError(
            f"{here} holds no pyproject.toml: install FedEmo from a checkout with `pip install -e .`"
        )
    return here


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            return flatten_dict(tomllib.load(fh))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err


def load_run_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], RunSettings]:
    """The fused flat run config and its parsed settings; unknown keys are an error naming the file."""
    override: dict[str, Any] = {}
    if config_file is not None:
        override = read_config_file(config_file)
    try:
        fused = get_fused_config_from_dir(project_dir(), override)
        fused = fuse_dicts(fused, dict(overrides or {}))
    except ValueError as err:
        raise ConfigError(f"{config_file or 'overrides'}: {err}") from err
    return fused, RunSettings.from_config(fused)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs from the command line, values read as TOML (numbers, booleans, strings)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare string
    return out


def prepare_run(config_file: str | Path | None, overrides: dict[str, Any] | None, label: str
                ) -> tuple[dict[str, Any], RunSettings]:
    """A run's config ready to start: absolute folders and a run name.

    Relative ``data-dir``/``runs-dir`` mean relative to where the user typed
    the command; an empty ``run-name`` becomes ``<time>-<task>-<label>``.
    """
    config, settings = load_run_config(config_file, overrides)
    for key in ("data-dir", "runs-dir"):
        config[key] = str(Path(str(config[key])).expanduser().resolve())
    if not settings.run_name:
        config["run-name"] = f"{time.strftime('%Y%m%d-%H%M%S')}-{settings.task}-{label}"
    return config, RunSettings.from_config(config)
