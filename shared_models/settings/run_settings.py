"""The run configuration, parsed and checked once, for the coordinator and the nodes alike.

Flower hands both sides the same flat run config (pyproject's ``[tool.flwr.app.config]`` fused with a
config file). ``RunSettings`` is that config, one section per job (one module each, beside its checks),
so a typo stops the run at start with the key's name instead of failing inside 50 clients. Each section's keys
have their defaults in pyproject.toml and their rows under the section's heading in docs/configuration.md
(tests/test_docs_tables.py holds the three to the same keys).
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

from shared_models.config_error import ConfigError
from shared_models.messages import UPDATE_WEIGHT as UPDATE_WEIGHT_KEY  # every train reply carries it as 1
from shared_models.settings.aggregation import AggregationSettings
from shared_models.settings.audit import AuditSettings
from shared_models.settings.central_dp import CentralDPSettings
from shared_models.settings.consent import ConsentSettings
from shared_models.settings.data import DataSettings
from shared_models.settings.dp import DPSettings, secure_mode_available
from shared_models.settings.fairness import FairnessSettings
from shared_models.settings.output import OutputSettings
from shared_models.settings.privacy_modes import check_supported_combination
from shared_models.settings.resume import RESUMABLE_KEYS, check_resume_changes, resume_changes
from shared_models.settings.rounds import RoundSettings
from shared_models.settings.secagg import SecAggSettings
from shared_models.settings.simulation import SimulationSettings
from shared_models.settings.training import TrainingSettings

__all__ = ["ConfigError", "RunSettings", "UPDATE_WEIGHT_KEY", "RESUMABLE_KEYS", "check_resume_changes",
           "resume_changes", "secure_mode_available", "SECTIONS"]

# checked in this order; a check may read keys of other sections (every section sees the whole settings)
SECTIONS = (DataSettings, SimulationSettings, RoundSettings, AggregationSettings, TrainingSettings, DPSettings,
            FairnessSettings, CentralDPSettings, OutputSettings, SecAggSettings, AuditSettings, ConsentSettings)

KEYS_LISTED_IN = "docs/configuration.md and pyproject.toml's [tool.flwr.app.config]"
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass(frozen=True)
class RunSettings(*reversed(SECTIONS)):
    """Every key of ``[tool.flwr.app.config]``; the defaults live there, not here."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        """Parse Flower's flat run config (hyphenated keys); unknown keys are refused.

        A node parses the same run config for every message, in each mod and handler: a config seen before (the
        same keys, values and value types, from the same working folder, as relative paths resolve against it)
        returns the settings it gave then (frozen, so shareable)."""
        try:
            key = (os.getcwd(), tuple(sorted((k, type(v).__name__, v) for k, v in config.items())))
            hash(key)
        except (TypeError, OSError):  # an unhashable value or no working folder: parsed afresh
            return cls._parse(config)
        return _parsed(cls, key)

    @classmethod
    def _parse(cls, config: Mapping[str, Any]) -> "RunSettings":
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise unknown_keys_error(unknown, known)
        missing = sorted(set(known) - set(config))
        if missing:
            raise ConfigError(f"run-config lacks keys: {', '.join(missing)} (defaults live in pyproject.toml)")
        values = {f.name: _coerce(key, config[key], _TYPES[f.type]) for key, f in known.items()}
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def private(self) -> bool:
        """Whether any differential-privacy mechanism is on (sample-level DP-SGD or client-level central DP)."""
        return self.dp or self.central_dp != "off"

    @property
    def federated_normalisation(self) -> bool:
        """Whether the coordinator asks nodes for their audio sums (never under any DP: they are not privatised)."""
        return self.feature_normalisation == "federated" or (self.feature_normalisation == "auto" and not self.private)

    def to_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def validate(self) -> None:
        for section in SECTIONS:
            section.check(self)
        check_supported_combination(self)  # privacy settings that do not work together (docs/privacy.md)


@functools.lru_cache(maxsize=16)
def _parsed(cls: type, key: tuple) -> RunSettings:
    """``RunSettings._parse`` of a config given as ``from_config``'s key (a config that fails raises every time)."""
    return cls._parse({name: value for name, _, value in key[1]})


def unknown_keys_error(unknown: Iterable[str], known: Iterable[str], where: str = "") -> ConfigError:
    """One line naming each unknown key, the known key it most resembles, and where every key is listed.

    ``where`` names the source (a config file, ``--set``); the caller raises the result.
    """
    known = sorted(known)
    named = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or difflib.get_close_matches(
            key.replace("_", "-"), known, n=1, cutoff=0.6)  # num_server_rounds: Python's spelling of a key
        named.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    noun = "key" if len(named) == 1 else "keys"
    return ConfigError(f"{where + ': ' if where else ''}unknown run-config {noun} {', '.join(named)}; "
                       f"every key is listed in {KEYS_LISTED_IN}")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """TOML gives ints where floats are meant (lr = 1); anything else mistyped is an error."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):  # TOML's inf/nan: never a setting
        raise ConfigError(f"run-config {key} = {value!r}: must be a finite number")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"run-config {key} = {value!r}: expected true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"run-config {key} = {value!r}: expected an integer")
    if not isinstance(value, kind):
        raise ConfigError(f"run-config {key} = {value!r}: expected {kind.__name__}")
    return value
