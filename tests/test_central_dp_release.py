"""Client-level DP releases every round whatever one hospital sends (issue 19, finding 3).

Driven on the real objects a coordinator runs: the FedEmo strategy from
``build_strategy`` with its screen, wrapped by ``wrap_strategy`` in the
configured Flower DP wrapper with its accountant, fed real Flower Messages in
the order server/rounds/round_loop.py uses (screen, then the wrapper's ``aggregate_train``).
The planned budget is set to exactly the plan, so a release that cost more
than planned (fewer averaged updates under the same noise) would be refused.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Error, Metadata

from server.privacy.central_dp import central_delta, epsilon_after, wrap_strategy
from server.privacy.flower_dp_seam import clip_update
from server.record.round_recorder import RoundRecorder
from server.record.run_record import RunRecord
from server.aggregation.strategy import build_strategy
from shared_models.settings.run_settings import RunSettings
from simulations.run_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
Z, C, M = 0.5, 1.0, 3  # noise multiplier, clipping norm, nodes sampled per round
SIZE = 120_000  # coordinates: enough to measure the noise's std to about 1%
GLOBAL = {"w": np.zeros(SIZE, np.float32), "b": np.zeros(7, np.float32)}


def settings(mode: str, rounds: int = 2) -> RunSettings:
    config = {**load_run_config(REPO / "configs" / "quickstart.toml")[0], "num-supernodes": M,
              "min-available-nodes": M, "num-server-rounds": rounds, "central-dp": mode,
              "central-dp-noise-multiplier": Z, "central-dp-clipping-norm": C, "update-max-norm": 5.0,
              "central-dp-clipped-count-stddev": 0.5}
    planned = epsilon_after(Z, rounds, central_delta(RunSettings.from_config(config), M))
    return RunSettings.from_config({**config, "central-dp-epsilon": planned * (1 + 1e-12)})  # the plan, exactly


def coordinator(tmp_path: Path, mode: str):
    """(FedEmo strategy, its DP wrapper's account) as server_app.main builds them."""
    run_settings = settings(mode)
    template = ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})
    record = RunRecord.create(tmp_path / "runs", f"release-{mode}", run_settings.to_config(), {})
    fedemo = build_strategy(run_settings, RoundRecorder(record, run_settings.num_server_rounds), template)
    central = wrap_strategy(fedemo, run_settings, population=M, run_dir=record.run_dir)
    central.strategy.current_arrays = template  # as the wrapper's configure_train sets it (no Grid here)
    return fedemo, central


def direction(seed: int, norm: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {k: rng.standard_normal(v.shape) for k, v in GLOBAL.items()}
    scale = norm / np.sqrt(sum(float((a ** 2).sum()) for a in raw.values()))
    return {k: (a * scale).astype(np.float32) for k, a in raw.items()}


def reply(client: int, update: dict[str, np.ndarray] | None, norm_bit: int | None = None) -> Message:
    """A node's training reply under client-level DP (``update`` None: the node failed)."""
    metadata = Metadata(run_id=7, message_id=f"m{client}-{time.time_ns()}", src_node_id=client + 1, dst_node_id=0,
                        reply_to_message_id="", group_id="", created_at=time.time(), ttl=3600.0,
                        message_type=MessageType.TRAIN)
    if update is None:
        return Message(error=Error(code=0, reason="the node's training raised"), metadata=metadata)
    metrics = MetricRecord({"num-examples": 40, "update-weight": 1})
    if norm_bit is not None:
        metrics["norm_bit"] = norm_bit
    content = RecordDict({"arrays": ArrayRecord({k: Array(GLOBAL[k] + update[k]) for k in GLOBAL}),
                          "metrics": metrics, "client": ConfigRecord({"client-id": str(client)})})
    return Message(content=content, metadata=metadata)


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], np.float64).ravel() for k in GLOBAL])


HONEST = {1: direction(1, 0.5), 2: direction(2, 0.5)}


@pytest.mark.parametrize("first", ["norm 4.5", "norm 6.0", "NaN"])
def test_one_hospitals_update_never_decides_whether_the_round_is_released(tmp_path, first):
    # update-max-norm 5: 4.5 is accepted (and clipped to C = 1), 6.0 and NaN are rejected by the screen.
    fedemo, central = coordinator(tmp_path, "server-fixed")
    if first == "NaN":
        big = {k: np.full_like(v, np.nan) for k, v in GLOBAL.items()}
    else:
        big = direction(0, float(first.split()[1]))
    replies = [reply(0, big)] + [reply(c, u) for c, u in HONEST.items()]

    passed = fedemo.screen_train_replies(1, replies)
    arrays, _ = central.strategy.aggregate_train(1, passed)

    rejected = [r["client"] for r in fedemo.recorder.train_of(1)["rejected"]]
    assert rejected == ([] if first == "norm 4.5" else ["0"])  # the screen still rejects it ...
    assert arrays is not None, "round not released"  # ... but the round is released either way
    assert central.release_rounds == [1] and central.multipliers == [Z / 2]  # accounted over the planned m = 3
    # The release is the mean over m slots (a rejected update is a zero update) plus noise of std z C / m:
    # the two cases differ only by the first update's clipped term, of norm at most C / m.
    first_term = (flat(dict(zip(GLOBAL, clip_update([GLOBAL[k] + big[k] for k in GLOBAL], list(GLOBAL.values()),
                                                    C)[0]))) if first == "norm 4.5" else 0.0)
    expected = (first_term + flat(GLOBAL) + flat(HONEST[1]) + flat(GLOBAL) + flat(HONEST[2])) / M
    residual = flat({k: arrays[k].numpy() for k in GLOBAL}) - expected
    assert np.std(residual) == pytest.approx(Z * C / M, rel=0.03)
    assert abs(np.mean(residual)) < 5 * Z * C / M / np.sqrt(residual.size)


@pytest.mark.parametrize("mode", ["server-fixed", "server-adaptive", "client-fixed", "client-adaptive"])
def test_a_failed_node_and_a_rejected_update_are_zero_updates_in_every_mode(tmp_path, mode):
    fedemo, central = coordinator(tmp_path, mode)
    bit = 0 if mode == "client-adaptive" else None
    nan = {k: np.full_like(v, np.nan) for k, v in GLOBAL.items()}
    replies = [reply(0, None), reply(1, HONEST[1], bit), reply(2, nan, bit)]  # only one usable update of three

    arrays, _ = central.strategy.aggregate_train(1, fedemo.screen_train_replies(1, replies))

    assert arrays is not None, "round not released"
    assert central.release_rounds == [1] and central.multipliers == [Z / 2]
    step = flat({k: arrays[k].numpy() for k in GLOBAL}) - flat(HONEST[1]) / M  # the one update over m, + noise
    # Noise z C / m (adaptive: Flower raises z so that the update and the clipped count are one mechanism).
    assert np.std(step) == pytest.approx(central.strategy.noise_multiplier * central.spent()["clipping_norm"] / M,
                                         rel=0.03)
    assert abs(np.mean(step)) < 5 * Z * C / M / np.sqrt(step.size)


# --------------------------------------------------------------------------- a real Flower simulation
from flwr.app import Context  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from client.client_app import app as fedemo_app  # noqa: E402


def _nan_mod(msg: Message, context: Context, call_next) -> Message:
    """Node 0 trains as usual and then sends NaN weights (a diverged training): the screen rejects it."""
    out = call_next(msg, context)
    if (msg.metadata.message_type == MessageType.TRAIN and not out.has_error()
            and int(context.node_config.get("partition-id", -1)) == 0):
        out.content["arrays"] = ArrayRecord({k: Array(np.full_like(a.numpy(), np.nan)) if a.numpy().dtype.kind == "f"
                                             else Array(a.numpy()) for k, a in out.content["arrays"].items()})
    return out


nan_app = ClientApp(mods=[_nan_mod])


@nan_app.train()
def _train(msg: Message, context: Context) -> Message:
    return fedemo_app(msg, context)


@nan_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return fedemo_app(msg, context)


@pytest.mark.slow
def test_a_simulation_with_one_diverged_hospital_releases_every_planned_round(tmp_path):
    import json

    from simulations.simulate import run_simulation

    z, rounds = 2.0, 2
    budget = epsilon_after(z, rounds, 1 / (10 * M)) * (1 + 1e-12)  # exactly the plan: no round may cost more
    run_dir = run_simulation(None, {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "diverged",
        "synth-samples": 300, "num-supernodes": M, "min-available-nodes": M, "num-server-rounds": rounds,
        "local-epochs": 1, "central-dp": "server-fixed", "central-dp-noise-multiplier": z,
        "central-dp-clipping-norm": 0.5, "central-dp-epsilon": budget, "update-max-norm": 50.0,
        "divergence-rounds": 0},  # z = 2 on 3 tiny nodes ruins the model (loss 34 once): releases are the point here
        client_app="tests.test_central_dp_release:nan_app")
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["round"] for e in entries] == [0, 1, 2]
    for entry in entries[1:]:
        assert [r["client"] for r in entry["train"]["rejected"]] == ["0"]  # node 0's NaN is screened out ...
        assert entry["train"].get("aggregated", True)  # ... and the round is released all the same
        assert entry["central_dp"]["releases"] == entry["round"]
        assert entry["central_dp"]["effective_noise_multipliers"] == [z / 2] * entry["round"]
        assert entry["central_dp"]["epsilon"] <= budget
