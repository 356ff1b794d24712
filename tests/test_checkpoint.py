"""The coordinator's checkpoint round-trips everything a resumed run needs (weights, server state, RNG, history)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import ArrayRecord

from server.record.checkpoint import Checkpoint, CheckpointError
from shared_models.models.registry import build_model

GLOBAL = ArrayRecord(build_model("face_cnn").state_dict())


def test_checkpoint_round_trips_weights_momentum_rng_and_history(tmp_path):
    random.seed(7)
    random.random()
    momentum = [np.ones((2, 3), np.float32), np.arange(4.0)]
    Checkpoint(2, GLOBAL, {"momentum": momentum}, random.getstate(), [{"round": 0}, {"round": 1}], {"3": {"epsilon": 1.0}}
               ).save(tmp_path)
    expected = [random.random() for _ in range(3)]
    loaded = Checkpoint.load(tmp_path)
    assert loaded.server_round == 2 and loaded.history == [{"round": 0}, {"round": 1}]
    assert loaded.privacy == {"3": {"epsilon": 1.0}}
    assert list(loaded.arrays.keys()) == list(GLOBAL.keys())
    for name, array in GLOBAL.items():
        np.testing.assert_array_equal(loaded.arrays[name].numpy(), array.numpy())
    for got, want in zip(loaded.server_state["momentum"], momentum):
        np.testing.assert_array_equal(got, want)
    random.setstate(loaded.rng_state)
    assert [random.random() for _ in range(3)] == expected  # Flower's client sampling continues identically
    with pytest.raises(CheckpointError, match="no checkpoint.npz"):
        Checkpoint.load(tmp_path / "elsewhere")
