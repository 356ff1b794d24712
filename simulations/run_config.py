"""Load a run config the way Flower does: pyproject defaults fused with a config file.

``fedemo simulate``, the centralised baseline and the tests all go through
here, so a config means exactly what it means to ``flwr run . --run-config``.
Flower's config helpers load inside the functions that use them:
:func:`check_known_keys` answers a mistyped key in about half a second,
before a command loads torch.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

from shared_models.settings.run_settings import ConfigError, RunSettings, unknown_keys_error


def project_dir() -> Path:
    """The Flower app folder (the repository root holding pyproject.toml)."""
    here = Path(__file__).resolve().parents[1]
    if not (here / "pyproject.toml").is_file():
        raise FileNotFoundError(
            f"{here} holds no pyproject.toml: install FedEmo from a checkout with `pip install -e .`"
        )
    return here


def read_config_file(path: str | Path) -> dict[str, Any]:
    from flwr.common.config import flatten_dict

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
    """The fused flat run config and its parsed settings; unknown keys are an error naming the file or --set."""
    from flwr.common.config import fuse_dicts, get_fused_config_from_dir

    override = check_known_keys(config_file, overrides)
    try:
        fused = get_fused_config_from_dir(project_dir(), override)  # exactly what `flwr run --run-config` does
        fused = fuse_dicts(fused, dict(overrides or {}))
    except ValueError as err:
        raise ConfigError(f"{config_file or 'overrides'}: {err}") from err
    return fused, RunSettings.from_config(fused)


def check_known_keys(config_file: str | Path | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The config file's flat keys, once it and ``--set`` name only known keys.

    A typo is answered in one line with the key it most resembles and where
    the keys are listed (before Flower's own "not present in the main
    dictionary" could).
    """
    override = read_config_file(config_file) if config_file is not None else {}
    known = default_config()
    for source, keys in ((str(config_file), override), ("--set", overrides or {})):
        if unknown := sorted(set(keys) - set(known)):
            raise unknown_keys_error(unknown, known, source)
    return override


def default_config() -> dict[str, Any]:
    """pyproject.toml's ``[tool.flwr.app.config]``, flat: every run-config key and its default."""
    from flwr.common.config import flatten_dict

    with open(project_dir() / "pyproject.toml", "rb") as fh:
        return flatten_dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


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
