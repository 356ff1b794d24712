"""Vectorised clients inside the local backend: a group of train messages answers each node as it alone would.

simulations/engine/client_groups.py runs each message through the real ClientApp (mods, data, consent log,
reply) and pools only the local training. Compared here on real messages and files with the same messages
answered one by one, and in real simulations with ``vectorised-clients`` on and off. SGD in float32 agrees to
1e-7 (tests/test_vectorised_clients.py says why Adam needs float64 for 1e-5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.client_app import app
from shared_models import messages as msgs
from shared_models.config_error import ConfigError
from shared_models.models.registry import build_model
from simulations.engine.client_groups import run_group, train_together
from simulations.run_config import load_run_config
from simulations.simulate import run_simulation
from simulations.synthetic.synthetic_data import synthesize

REPO = Path(__file__).resolve().parents[1]
NODES = 4


def _requests(tmp_path: Path, model: str, dataset: str, **overrides):
    synthesize(dataset, tmp_path / dataset, 120 if dataset == "cremad" else 200, 0)  # clips cost more than faces
    run_config, settings = load_run_config(None, {
        "data-dir": str(tmp_path / dataset), "num-supernodes": NODES, "partitioner": "dirichlet", "model": model,
        "dataset": dataset, "task": "voice" if dataset == "cremad" else "face", "client-threads": 1,
        "optimizer": "sgd", "learning-rate": 0.01, "local-epochs": 2, "batch-size": 8,
        "feature-normalisation": "fixed", **overrides})
    global_arrays = ArrayRecord(build_model(settings.model).state_dict())

    def request(partition: int, kind: str = MessageType.TRAIN) -> tuple[Message, Context]:
        context = Context(run_id=1, node_id=partition + 1, node_config={"partition-id": partition,
                                                                        "num-partitions": NODES},
                          state=RecordDict(), run_config=dict(run_config))
        content = RecordDict({msgs.ARRAYS: global_arrays,
                              msgs.CONFIG: ConfigRecord({msgs.SERVER_ROUND: 2, msgs.DATA_DIR: settings.data_dir})})
        return Message(content, dst_node_id=partition + 1, message_type=kind), context

    return request, global_arrays


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content[msgs.ARRAYS].items()}


@pytest.mark.parametrize("model,dataset", [("face_cnn", "fer2013"), ("voice_stats", "cremad"),
                                           pytest.param("face_scatter_lcn", "fer2013", marks=pytest.mark.slow),
                                           pytest.param("face_scatter", "fer2013", marks=pytest.mark.slow),
                                           pytest.param("face_scatter_lcn_blur", "fer2013", marks=pytest.mark.slow),
                                           pytest.param("voice_stats_norm", "cremad", marks=pytest.mark.slow)])
def test_a_group_of_train_messages_answers_each_node_as_it_alone_would(tmp_path, task_identity, model, dataset):
    request, global_arrays = _requests(tmp_path, model, dataset)
    # Beside the nodes' train messages: an evaluate message (never trains) and a node that fails while preparing
    # (a partition the data does not have): the group must not wait for either, and each answers as alone.
    group = [request(p) for p in range(NODES)] + [request(0, MessageType.EVALUATE)]
    bad = request(1)
    bad[1].node_config["partition-id"] = NODES + 7
    group.append(bad)
    trained_together: list[int] = []

    def counting(slots):
        trained_together.append(len(slots))
        train_together(slots)

    outcomes = run_group(app, group, train=counting)
    assert trained_together == [NODES]  # one vectorised computation for the four train messages
    for (message, context), (status, payload) in zip(group[:-1], outcomes):
        assert status == "ok", payload
        got = payload[0]
        alone = app(message=message, context=context)
        assert not got.has_error() and not alone.has_error()
        assert dict(got.content[msgs.CLIENT]) == dict(alone.content[msgs.CLIENT])
        metrics, expected = dict(got.content[msgs.METRICS]), dict(alone.content[msgs.METRICS])
        assert metrics.keys() == expected.keys()
        for key, value in expected.items():  # the mean training loss to float32 rounding; the rest exactly
            assert metrics[key] == (pytest.approx(value, rel=1e-4) if key == msgs.TRAIN_LOSS else value), key
        if message.metadata.message_type == MessageType.EVALUATE:
            assert msgs.ARRAYS not in got.content
            continue
        ours, theirs = _arrays(got), _arrays(alone)
        start = {k: v.numpy() for k, v in global_arrays.items()}
        assert any(not np.allclose(ours[k], v, atol=1e-4) for k, v in start.items())  # it trained
        # float32, summed in another order: equal to rounding, not bit for bit. Adam's second step divides by
        # the root of the squared gradients, which magnifies the rounding of small ones: 1.7% of the node's
        # own step was seen in 1 run of 10 (a mixed-up node or batch is off by about 100%).
        for name, array in theirs.items():
            np.testing.assert_allclose(ours[name], array, atol=2e-4, rtol=0, err_msg=name)
            update = np.abs(array - start[name]).max()
            assert np.abs(ours[name] - array).max() <= 0.05 * update + 1e-7, name  # 5% of the node's own step
    status, reason = outcomes[-1]
    assert status == "error" and reason == _alone_error(app, *bad)


def _alone_error(client_app, message, context) -> str:
    try:
        client_app(message=message, context=context)
    except Exception as err:  # noqa: BLE001 - the same words a worker sends for it alone
        return str(err) or type(err).__name__
    raise AssertionError("the bad node trained")


def test_a_failing_vectorised_step_fails_each_of_its_nodes_and_nothing_hangs(tmp_path, task_identity):
    request, _ = _requests(tmp_path, "face_cnn", "fer2013")

    def broken(slots):
        for slot in slots:
            slot.batches = [tuple(torch.cat([t, t], 1) if t.dim() == 4 else t for t in batch) for batch in slot.batches]
        train_together(slots)  # two channels for a one-channel model: the model raises inside the vectorised step

    outcomes = run_group(app, [request(p) for p in range(NODES)], train=broken)
    assert [status for status, _ in outcomes] == ["error"] * NODES
    assert all("vectorised local training failed" in reason for _, reason in outcomes)


@pytest.mark.parametrize("overrides,why", [
    ({"simulation-backend": "ray"}, 'only with simulation-backend = "local"'),
    ({"dp": True, "model": "face_resnet"}, "not with dp = true for model 'face_resnet'"),
    ({"model": "voice_crnn", "task": "voice", "dataset": "cremad"}, "model 'voice_crnn' is not supported"),
])
def test_vectorised_clients_are_refused_where_they_cannot_hold(overrides, why):
    with pytest.raises(ConfigError, match="vectorised-clients") as refused:
        load_run_config(REPO / "configs" / "quickstart.toml", {"vectorised-clients": True, **overrides})
    assert why in str(refused.value)
    load_run_config(REPO / "configs" / "quickstart.toml", {"vectorised-clients": False, **overrides})  # the key alone


@pytest.mark.slow
def test_a_simulation_with_vectorised_clients_equals_the_one_without(tmp_path):
    """Real runs on the local backend: each node's training loss, every round's loss and the final model agree."""
    def simulate(name: str, vectorised: bool) -> Path:
        config = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
                  "synth-samples": 400, "num-supernodes": 6, "min-available-nodes": 6, "num-server-rounds": 2,
                  "simulation-backend": "local", "simulation-workers": 2, "local-epochs": 1, "optimizer": "sgd",
                  "learning-rate": 0.05, "vectorised-clients": vectorised}
        return run_simulation(REPO / "configs" / "quickstart.toml", config)

    off, on = simulate("off", False), simulate("on", True)
    engine = json.loads((on / "summary.json").read_text())["engine"]
    assert sum(engine["vectorised_groups"]) == 6 * 2 and max(engine["vectorised_groups"]) > 1
    assert "vectorised_groups" not in json.loads((off / "summary.json").read_text())["engine"]
    rounds_off, rounds_on = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                             for run in (off, on))
    for a, b in zip(rounds_off[1:], rounds_on[1:], strict=True):
        losses_a = {c["client"]: c["train_loss"] for c in a["train"]["clients"]}
        losses_b = {c["client"]: c["train_loss"] for c in b["train"]["clients"]}
        assert losses_a.keys() == losses_b.keys() and len(losses_a) == 6
        for client, loss in losses_a.items():
            assert losses_b[client] == pytest.approx(loss, rel=1e-4), client  # float32 rounding
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    state_off, state_on = (torch.load(run / "global_model.pt") for run in (off, on))  # the final state dicts
    for name, tensor in state_off.items():
        torch.testing.assert_close(state_on[name], tensor, atol=1e-4, rtol=0, msg=name)
