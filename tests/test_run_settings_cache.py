"""RunSettings.from_config remembers configs it parsed (a node parses the same run config in every mod and handler
of every message): a config it saw returns the same settings, and nothing else does."""

from __future__ import annotations

import os

import pytest

from shared_models.settings.run_settings import ConfigError, RunSettings
from simulations.run_config import load_run_config


def base_config() -> dict:
    return dict(load_run_config(None, {})[0])


def test_the_same_config_gives_the_same_settings_and_a_changed_one_its_own():
    config = base_config()
    first = RunSettings.from_config(config)
    assert RunSettings.from_config(dict(config)) is first  # parsed once
    changed = RunSettings.from_config({**config, "num-server-rounds": config["num-server-rounds"] + 1})
    assert changed.num_server_rounds == first.num_server_rounds + 1 and changed is not first


def test_a_value_of_another_type_is_parsed_not_taken_for_the_equal_one_seen_before():
    """True == 1 and hash(True) == hash(1): a cache keyed by values alone would hand a bool key's settings to 1."""
    config = base_config()
    RunSettings.from_config({**config, "dp": False})
    for value in (0, 0.0, "false"):
        try:
            parsed = RunSettings.from_config({**config, "dp": value})
        except ConfigError as err:  # refused afresh, every time
            with pytest.raises(ConfigError, match=str(err)[:20]):
                RunSettings.from_config({**config, "dp": value})
        else:
            assert parsed == RunSettings._parse({**config, "dp": value})


def test_a_bad_config_is_refused_every_time():
    config = {**base_config(), "num-server-rounds": -3}
    for _ in range(2):
        with pytest.raises(ConfigError, match="num-server-rounds"):
            RunSettings.from_config(config)


def test_relative_paths_resolve_against_the_folder_of_each_call(tmp_path):
    config = base_config()
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        in_tmp = RunSettings.from_config(config)
    finally:
        os.chdir(here)
    assert RunSettings.from_config(config) is not in_tmp
