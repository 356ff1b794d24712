"""FedEmo's trimmed mean (server/aggregation/trimmed_mean.py) against Flower's own, on arrays and on real Flower
replies through ``FedEmoFedTrimmedAvg.aggregate_train`` (the arrays, the metrics, the replies it skips)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Error, Metadata
from flwr.serverapp.strategy import FedTrimmedAvg
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from server.aggregation.strategy import FedEmoFedTrimmedAvg
from server.aggregation.trimmed_mean import trimmed_mean


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 10, 17, 50])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.25, 0.49])
def test_the_same_trimmed_mean_as_flowers(n, beta):
    rng = np.random.default_rng(n)
    stacked = rng.standard_normal((n, 3, 41)).astype(np.float32)
    stacked[:, 0, :5] = 0.5  # ties
    stacked[: n // 2, 1, :3] *= 1e6  # outliers on one side
    got, want = trimmed_mean(stacked, beta), trim_mean(stacked, beta)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.float16])
def test_other_dtypes_and_non_finite_values_as_flower_takes_them(dtype):
    rng = np.random.default_rng(0)
    stacked = (rng.standard_normal((12, 30)) * 100).astype(dtype)
    got, want = trimmed_mean(stacked, 0.2), trim_mean(stacked, 0.2)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-3 if dtype == np.float16 else 1e-12)
    floats = rng.standard_normal((12, 30))
    floats[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    floats[1:4, 0] = np.nan  # more NaNs than are cut: the mean is NaN in both
    np.testing.assert_allclose(trimmed_mean(floats, 0.2), trim_mean(floats, 0.2), rtol=1e-12, equal_nan=True)


def test_a_cut_fraction_outside_zero_to_one_half_is_refused():
    for beta in (-0.1, 0.5, 0.7):
        with pytest.raises(ValueError, match="cut fraction"):
            trimmed_mean(np.zeros((4, 2)), beta)


def _replies(seed: int, n: int) -> list[Message]:
    rng = np.random.default_rng(seed)
    replies = []
    for node in range(1, n + 1):
        arrays = {"w": rng.standard_normal((4, 6)).astype(np.float32), "b": rng.standard_normal(6),
                  "steps": np.array(rng.integers(0, 100), dtype=np.int64)}
        content = RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
                              "metrics": MetricRecord({"num-examples": int(rng.integers(5, 50)),
                                                       "train-loss": float(rng.random())}),
                              "client": ConfigRecord({"client-id": str(node)})})
        metadata = Metadata(run_id=7, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                            group_id="", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
        replies.append(Message(content=content, metadata=metadata))
    failed = Message(Error(code=0, reason="node crashed"), reply_to=replies[0])  # skipped by both
    return replies + [failed]


@pytest.mark.parametrize("n", [4, 11])
def test_aggregate_train_equals_flowers_on_real_replies(n):
    flower = FedTrimmedAvg(beta=0.2)
    want_arrays, want_metrics = flower.aggregate_train(3, _replies(n, n))
    got_arrays, got_metrics = FedEmoFedTrimmedAvg.aggregate_train(FedTrimmedAvg(beta=0.2), 3, _replies(n, n))
    assert list(got_arrays.keys()) == list(want_arrays.keys()) == ["w", "b", "steps"]
    for key in want_arrays:
        got, want = got_arrays[key].numpy(), want_arrays[key].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert dict(got_metrics) == dict(want_metrics)


def test_aggregate_train_without_valid_replies_is_nothing_as_in_flower():
    only_failed = _replies(1, 2)[-1:]
    assert FedEmoFedTrimmedAvg.aggregate_train(FedTrimmedAvg(beta=0.2), 1, only_failed) == (None, None)
