"""What a resumed run may change, and the refusal naming everything else it tried to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from shared_models.config_error import ConfigError
from shared_models.settings.defaults import default_run_config

# Keys a resumed run may change: where the run lives, how many rounds it plans, and the machines it runs on.
# Everything else decides what was already trained or how it was accounted (model, data, seed, privacy,
# aggregation, ...): changing it midway would sign one run's report over two different runs.
RESUMABLE_KEYS = frozenset({"num-server-rounds", "round-timeout", "resume", "runs-dir", "run-name",
                            "simulation-backend", "ray-address",
                            "simulation-workers", "client-num-cpus", "client-num-gpus", "client-threads", "device"})


def resume_changes(saved: Mapping[str, Any], resumed: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{key: [saved value, resumed value]} for every key ``resumed`` sets to another value than ``saved``.

    A key the saved run predates (absent from its config: added by a later FedEmo) is a change only when the
    resumed value differs from its default, since a new key's default is what the older code did.
    """
    missing = object()
    defaults = default_run_config()
    return {key: [saved.get(key), value] for key, value in sorted(resumed.items())
            if saved.get(key, missing) != value and not (key not in saved and defaults.get(key, missing) == value)}


def check_resume_changes(changes: Mapping[str, list[Any]], run_dir: str | Path) -> None:
    """Refuse, by name, every change a resumed run may not make (``RESUMABLE_KEYS`` may change)."""
    refused = {key: pair for key, pair in changes.items() if key not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(f"{run_dir}: {', '.join(refused)} cannot change on resume ({listed}): the run's "
                          f"rounds so far were trained with the saved value; only "
                          f"{', '.join(sorted(RESUMABLE_KEYS - {'resume', 'runs-dir', 'run-name'}))} may. "
                          "Start a new run for a different config")
