"""Client-level central DP through Flower's DP wrappers: real simulations (slow), and the wrappers' own steps.

The fast tests drive the wrappers with real Flower messages: a zero update
through Flower's server-side clipping and ours, the adaptive noise scale,
and the accountant's state across a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from client.client_app import app as fedemo_app
from server.privacy.central_dp import RELEASES_FILE, CentralDP, check_resumable, epsilon_after
from server.privacy.flower_dp_seam import ServerSideAdaptiveClipping, ServerSideFixedClipping, clip_update
from server.record.checkpoint import Checkpoint, CheckpointError
from shared_models.config_error import ConfigError
from shared_models.models.registry import build_model
from simulations.cli import main as fedemo
from simulations.simulate import run_simulation


def _echo_mod(msg: Message, context: Context, call_next) -> Message:
    """Node 0 trains as usual but sends back the global model it received: an update of norm exactly 0."""
    reply = call_next(msg, context)
    if (msg.metadata.message_type == MessageType.TRAIN and not reply.has_error()
            and int(context.node_config.get("partition-id", -1)) == 0):
        reply.content["arrays"] = ArrayRecord({k: Array(a.numpy().copy()) for k, a in msg.content["arrays"].items()})
    return reply


echo_app = ClientApp(mods=[_echo_mod])


@echo_app.train()
def _train(msg: Message, context: Context) -> Message:
    return fedemo_app(msg, context)


@echo_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return fedemo_app(msg, context)


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tiny(tmp_path: Path, **overrides) -> dict:
    return {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "synth-samples": 300,
            "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 2, "local-epochs": 1,
            "divergence-rounds": 0,  # central DP noise on 3 tiny nodes can ruin a round; the guard is tested elsewhere
            **overrides}


def update_norm(run_dir: Path, seed: int) -> float:
    """L2 distance between the saved global model and the initial one the run started from."""
    torch.manual_seed(seed)
    initial = build_model("face_cnn").state_dict()
    final = torch.load(run_dir / "global_model.pt")
    return float(torch.sqrt(sum(((final[k].double() - initial[k].double()) ** 2).sum() for k in initial)))


@pytest.mark.slow
def test_client_side_fixed_clipping_bounds_each_update_and_accounts_every_release(tmp_path):
    # Near-zero noise makes the clipping visible: the average of updates clipped to C moves the model at most C
    # per round, so two rounds move it at most 2C (plus noise of std z*C/m per coordinate).
    clip = 0.05
    run_dir = run_simulation(None, tiny(tmp_path, **{
        "run-name": "cfixed", "central-dp": "client-fixed", "central-dp-clipping-norm": clip,
        "central-dp-noise-multiplier": 0.01, "learning-rate": 0.01}))
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for entry in rounds[1:]:
        dp = entry["central_dp"]
        assert dp["mode"] == "client-fixed" and dp["num_sampled_clients"] == 3 and dp["population"] == 3
        assert dp["delta"] == pytest.approx(1 / 30)
        # Replace-one-hospital: each release a Gaussian at z / 2, recomputed with dp-accounting directly.
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(dp["noise_multiplier"] / 2), dp["releases"])
        assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(dp["delta"]), rel=1e-9)
        assert dp["effective_noise_multipliers"] == [dp["noise_multiplier"] / 2] * dp["releases"]
        assert dp["releases"] == entry["round"]
    assert update_norm(run_dir, seed=42) <= 2 * clip * 1.05
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["central_dp"]["epsilon"] == rounds[-1]["central_dp"]["epsilon"]


@pytest.mark.slow
def test_server_side_adaptive_clipping_moves_the_norm_and_is_accounted_with_dp_accounting(tmp_path):
    run_dir = run_simulation(None, tiny(tmp_path, **{
        "run-name": "sadapt", "central-dp": "server-adaptive", "central-dp-clipping-norm": 0.01,
        "central-dp-noise-multiplier": 0.5, "central-dp-clipped-count-stddev": 0.3}))
    rounds = read_rounds(run_dir)
    norms = [r["central_dp"]["clipping_norm"] for r in rounds[1:]]
    # Every update is far above 0.01, so the unclipped fraction is 0 (+ N(0, 0.3)/3 noise) < 0.5 and the norm
    # grows geometrically. The count noise must stay small against 3 nodes: with stddev 1.0 it crossed 0.5 in
    # about 7% of runs and CI saw the norm shrink (stddev must exceed z/2 = 0.25 for Flower's split).
    assert norms[0] == 0.01 and norms[1] > norms[0]
    assert rounds[1]["central_dp"]["next_clipping_norm"] == norms[1]
    for entry in rounds[1:]:
        dp = entry["central_dp"]
        assert dp["releases"] == entry["round"]
        assert dp["epsilon"] == pytest.approx(epsilon_after(0.5, entry["round"], dp["delta"]))


@pytest.mark.slow
def test_plan_over_the_client_level_budget_is_refused_before_any_work(tmp_path, capsys):
    code = fedemo(["simulate", "--set", f"data-dir={tmp_path / 'fer'}", "--set", f"runs-dir={tmp_path / 'runs'}",
                   "--set", "central-dp=server-fixed", "--set", "central-dp-noise-multiplier=0.8",
                   "--set", "central-dp-epsilon=3", "--set", "num-server-rounds=20"])
    assert code == 2
    err = capsys.readouterr().err
    assert "central-dp-epsilon 3" in err and "allows" in err and "rounds" in err
    assert not (tmp_path / "fer").exists()  # refused before the data was even written


@pytest.mark.slow
def test_central_dp_mode_is_validated_by_name(tmp_path, capsys):
    assert fedemo(["simulate", "--set", "central-dp=sometimes", "--set", f"runs-dir={tmp_path}"]) == 2
    assert "central-dp" in capsys.readouterr().err
    assert fedemo(["simulate", "--set", "central-dp=server-fixed", "--set", "central-dp-noise-multiplier=0",
                   "--set", f"runs-dir={tmp_path}"]) == 2
    assert "no noise, no privacy" in capsys.readouterr().err


def test_epsilon_after_matches_a_hand_computed_gaussian_bound():
    # One Gaussian release with multiplier 4.530877117 is exactly (1, 1e-6)-DP (dp-accounting's own test
    # table); under replace-one that is noise multiplier z = 2 x 4.530877117. RDP over the default orders
    # can only be slightly looser, never tighter.
    eps = epsilon_after(2 * 4.530877117, 1, 1e-6)
    assert 1.0 <= eps <= 1.05
    assert epsilon_after(1.0, 0, 1e-5) == 0.0
    assert np.isclose(epsilon_after(2.0, 10, 1e-5), epsilon_after(2.0 / np.sqrt(10), 1, 1e-5), rtol=1e-3)


@pytest.mark.slow
def test_voice_under_dp_uses_fixed_normalisation_and_federated_sums_are_refused(tmp_path, capsys):
    from simulations.synthetic.synth_voices import write_cremad

    write_cremad(tmp_path / "cremad", n_clips=60, seed=3, n_actors=6)
    run_dir = run_simulation(None, {
        "task": "voice", "dataset": "cremad", "model": "voice_crnn", "data-dir": str(tmp_path / "cremad"),
        "runs-dir": str(tmp_path / "runs"), "run-name": "voice-dp", "partitioner": "natural",
        "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1, "local-epochs": 1,
        "batch-size": 8, "dp": True, "augment": False})
    state = torch.load(run_dir / "global_model.pt")
    mean = next(v for k, v in state.items() if k.endswith("feature_mean"))
    std = next(v for k, v in state.items() if k.endswith("feature_std"))
    assert torch.all(mean == -30.0) and torch.all(std == 15.0)  # the pyproject defaults, no node was asked
    assert read_rounds(run_dir)[1]["train"]["clients"][0]["dp"]["epsilon"] > 0

    assert fedemo(["simulate", "--set", "dp=true", "--set", "feature-normalisation=federated",
                   "--set", f"runs-dir={tmp_path}"]) == 2
    assert "not cover" in capsys.readouterr().err


@pytest.mark.slow
def test_a_node_whose_update_is_zero_does_not_stop_server_side_clipping(tmp_path):
    # Flower 1.41's server-side clipping divides the clipping norm by the update's norm: one node that sends the
    # global model back (norm 0) raised ZeroDivisionError and ended the federation in round 1.
    run_dir = run_simulation(None, tiny(tmp_path, **{
        "run-name": "zero", "central-dp": "server-fixed", "central-dp-clipping-norm": 0.5,
        "central-dp-noise-multiplier": 0.5}), client_app="tests.test_central_dp:echo_app")
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for entry in rounds[1:]:
        assert entry["train"]["update_norms"]["0"] == 0.0  # the zero update was received, clipped (as is), averaged
        assert len(entry["train"]["clients"]) == 3 and entry["train"].get("aggregated", True)
        assert entry["central_dp"]["releases"] == entry["round"]


def _message(arrays: dict[str, np.ndarray], node: int, reply_to: Message | None = None) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v.copy()) for k, v in arrays.items()})})
    if reply_to is None:
        return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
    content["metrics"] = MetricRecord({"num-examples": 1})
    return Message(content, reply_to=reply_to)


@pytest.mark.parametrize("flower_cls, ours", [(DifferentialPrivacyServerSideFixedClipping, ServerSideFixedClipping),
                                              (DifferentialPrivacyServerSideAdaptiveClipping,
                                               ServerSideAdaptiveClipping)])
def test_a_zero_update_through_flowers_server_clipping_and_ours(task_identity, flower_cls, ours):
    globe = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    moved = {k: v + 3.0 for k, v in globe.items()}  # norm 3 x sqrt(9) = 9

    def replies():
        return [_message(arrays, node, _message(globe, node)) for node, arrays in ((1, globe), (2, moved))]

    def wrapper(cls):
        strategy = (cls(FedAvg(), 0.5, 1.0, 2) if "Fixed" in cls.__name__
                    else cls(FedAvg(), 0.5, 2, initial_clipping_norm=1.0, clipped_count_stddev=1.0))
        strategy.account = CentralDP("server", strategy, 0.5, 1e-3, 2, 2, 0)
        strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in globe.items()})  # as configure_train sets it
        return strategy

    with pytest.raises(ZeroDivisionError):  # Flower 1.41 itself (drop this check once Flower guards it)
        wrapper(flower_cls).aggregate_train(1, replies())
    strategy = wrapper(ours)
    arrays, _ = strategy.aggregate_train(1, replies())
    assert arrays is not None and strategy.account.release_rounds == [1]
    # The mean of a zero update and one clipped to norm 1, plus noise of std 0.5 x 1 / 2: about 0.5 from the start.
    step = np.concatenate([(arrays[k].numpy() - globe[k]).ravel() for k in globe])
    assert 0.0 < np.linalg.norm(step) < 0.5 + 5 * 0.25 * np.sqrt(step.size)


def test_clip_update_leaves_a_zero_update_alone_and_clips_like_flower_otherwise():
    old = [np.ones(4, np.float32), np.zeros((2, 2), np.float32)]
    same, clipped = clip_update([a.copy() for a in old], old, 0.1)
    assert not clipped and all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(same, old))
    new = [a + 1.0 for a in old]  # update norm sqrt(8)
    out, clipped = clip_update(new, old, 0.5)
    assert clipped and np.isclose(np.sqrt(sum(((o - a) ** 2).sum() for o, a in zip(out, old))), 0.5)
    assert all(o.dtype == np.float32 for o in out)
    out, clipped = clip_update(new, old, 10.0)
    assert not clipped and all(np.array_equal(o, n) for o, n in zip(out, new))


def test_adaptive_noise_is_scaled_by_the_norm_the_round_was_clipped_to(task_identity):
    # Flower moves the adaptive norm before it adds the round's noise; the noise must follow the norm used.
    strategy = ServerSideAdaptiveClipping(FedAvg(), 0.05, 2, initial_clipping_norm=1.0, clip_norm_lr=1.0,
                                          clipped_count_stddev=0.1)
    strategy.account = CentralDP("server-adaptive", strategy, 0.05, 1e-3, 2, 2, 0)
    globe = {"w": np.zeros(200_000, np.float32)}
    strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in globe.items()})
    zero_updates = [_message(globe, n, _message(globe, n)) for n in (1, 2)]
    arrays, _ = strategy.aggregate_train(1, zero_updates)  # nothing clipped: the norm shrinks to about 0.6
    assert strategy.clipping_norm < 0.75
    # Sensitivity is the norm the updates were clipped to (1.0): the noise std must be z x 1.0 / 2.
    assert np.std(arrays["w"].numpy()) == pytest.approx(strategy.noise_multiplier * 1.0 / 2, rel=0.02)


def _adaptive_account(run_dir: Path) -> CentralDP:
    strategy = ServerSideAdaptiveClipping(FedAvg(), 0.8, 3, initial_clipping_norm=0.1, clipped_count_stddev=1.0)
    account = CentralDP("server-adaptive", strategy, 0.8, 1e-3, 3, 3, 0, journal=run_dir / RELEASES_FILE)
    strategy.account = account
    return account


def test_the_account_and_the_clipping_norm_survive_a_checkpoint_exactly(tmp_path):
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole_dir.mkdir(), cut_dir.mkdir()
    releases = [(1, 3, 0.1), (2, 2, 0.13), (3, 3, 0.17)]  # (round, updates averaged, clipping norm used)
    whole = _adaptive_account(whole_dir)
    for server_round, averaged, clip in releases:
        whole.count_release(averaged, clip, server_round)

    part = _adaptive_account(cut_dir)
    part.count_release(*releases[0][1:], releases[0][0])
    part.strategy.clipping_norm = 0.13  # where round 1's adaptive step left it
    globe = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    Checkpoint(1, globe, central=part.state()).save(cut_dir)

    resumed = _adaptive_account(cut_dir)  # a fresh coordinator: configured norm 0.1, nothing released
    resumed.resume(Checkpoint.load(cut_dir).central, cut_dir, 1)
    assert resumed.strategy.clipping_norm == 0.13 and resumed.multipliers == part.multipliers
    for server_round, averaged, clip in releases[1:]:
        resumed.count_release(averaged, clip, server_round)
    assert resumed.spent()["epsilon"] == whole.spent()["epsilon"]  # the same releases: the same epsilon, exactly
    assert resumed.multipliers == whole.multipliers and resumed.release_rounds == [1, 2, 3]
    accountant = dp_accounting.rdp.RdpAccountant()
    for z in (0.4, 0.8 * 2 / 6, 0.4):
        accountant.compose(dp_accounting.GaussianDpEvent(z))
    assert resumed.spent()["epsilon"] == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-9)


def test_a_resume_without_the_release_journal_or_in_another_mode_is_refused(tmp_path):
    part = _adaptive_account(tmp_path)
    part.count_release(3, 0.1, 1)
    state = part.state()
    (tmp_path / RELEASES_FILE).unlink()
    with pytest.raises(CheckpointError, match="forgotten spend"):
        _adaptive_account(tmp_path).resume(state, tmp_path, 1)
    with pytest.raises(ConfigError, match="central-dp = server-fixed"):
        check_resumable("server-fixed", state, tmp_path)
    with pytest.raises(ConfigError, match="without noise"):
        check_resumable("server-adaptive", {}, tmp_path)
    check_resumable("off", {}, tmp_path)  # a run without client-level DP resumes as it was
