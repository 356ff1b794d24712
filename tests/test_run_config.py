"""Run configs: every shipped config parses; bad values are refused by key."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from shared_models.settings.run_settings import ConfigError
from simulations.run_config import load_run_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))


def test_configs_folder_ships_the_documented_configs():
    assert {p.name for p in CONFIGS} >= {"quickstart.toml", "face50.toml", "voice50.toml", "fusion.toml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config, settings = load_run_config(path)
    assert settings.to_config() == config


def test_fifty_client_configs_really_have_fifty_clients():
    for name, task in (("face50.toml", "face"), ("voice50.toml", "voice")):
        _, settings = load_run_config(Path(CONFIGS[0]).parent / name)
        assert settings.num_supernodes == 50 == settings.min_available_nodes and settings.task == task


@pytest.mark.parametrize("overrides, key", [
    ({"learning-rate": -1.0}, "learning-rate"),
    ({"batch-size": "32"}, "batch-size"),
    ({"augment": 1}, "augment"),
    ({"model": "voice_crnn"}, "model"),
    ({"task": "fusion", "model": "fusion", "dataset": "fer2013"}, "dataset"),
    ({"client-num-gpus": 2.0}, "client-num-gpus"),
    ({"valence-arousal": True}, "valence-arousal"),
])
def test_bad_values_are_refused_by_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_run_config(None, overrides)


def test_unknown_keys_name_the_file(tmp_path):
    bad = tmp_path / "typo.toml"
    bad.write_text("num-server-round = 3\n")
    with pytest.raises(ConfigError, match="typo.toml.*num-server-round"):
        load_run_config(bad)


def test_command_line_overrides_are_read_as_toml_values():
    assert parse_overrides(["num-server-rounds=5", "augment=false", "lr=0.5", 'data-dir="x y"', "run-name=abc"]) == {
        "num-server-rounds": 5, "augment": False, "lr": 0.5, "data-dir": "x y", "run-name": "abc"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_a_negative_seed_is_refused_by_name():
    from shared_models.settings.run_settings import ConfigError
    from simulations.run_config import load_run_config

    with pytest.raises(ConfigError, match="seed = -1"):
        load_run_config(None, {"seed": -1})


def test_settings_loaders_and_models_read_one_dataset_task_model_table():
    """shared_models/datasets.py is the only table: the loaders and model constructors name its entries, and
    the settings accept exactly its task/dataset/model combinations."""
    from client.data.loaders.registry import LOADERS
    from shared_models import datasets
    from shared_models.models.registry import CONSTRUCTORS, model_task

    assert set(LOADERS) == set(datasets.DATASETS) and set(CONSTRUCTORS) == set(datasets.MODELS)
    assert all(model_task(name) == entry.task for name, entry in datasets.MODELS.items())
    for task, dataset, model in itertools.product(datasets.TASKS, datasets.DATASETS, datasets.MODELS):
        overrides = {"task": task, "dataset": dataset, "model": model, "feature-normalisation": "fixed"}
        fits = dataset in datasets.TASK_DATASETS[task] and datasets.MODELS[model].task == task
        if fits:
            load_run_config(None, overrides)
        else:
            with pytest.raises(ConfigError, match="run-config (dataset|model) = "):
                load_run_config(None, overrides)


def test_a_config_is_checked_without_loading_torch():
    """Checking the task/dataset/model keys needs the table only, not the models (torch takes seconds to load)."""
    code = ("import sys, tomllib; from shared_models.settings.run_settings import RunSettings; "
            "c = tomllib.load(open('pyproject.toml', 'rb'))['tool']['flwr']['app']['config']; "
            "RunSettings.from_config(c); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
