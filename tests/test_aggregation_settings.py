"""Aggregation settings that cannot work together are refused at start, naming the key."""

from __future__ import annotations

import pytest

from shared_models.settings.run_settings import ConfigError
from simulations.run_config import load_run_config


@pytest.mark.parametrize("overrides, key", [
    ({"aggregation": "krum", "central-dp": "server-fixed"}, "aggregation"),
    ({"aggregation": "fedmedian", "secure-aggregation": True, "num-supernodes": 4}, "aggregation"),
    ({"aggregation": "fedtrimmedavg", "server-momentum": 0.9}, "aggregation"),
    ({"aggregation": "bulyan", "num-supernodes": 5}, "aggregation"),
    ({"aggregation": "mean"}, "aggregation"),
    ({"resume": "runs/x", "secure-aggregation": True}, "resume"),
    ({"update-norm-ratio": 0.5}, "update-norm-ratio"),
])
def test_bad_combinations_are_refused_at_start_by_key(overrides, key):
    with pytest.raises(ConfigError, match=f"run-config {key} ="):
        load_run_config(None, overrides)
