"""The one-run empirical privacy audit (issue 23): the bound from counts, and audits of real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared_models.privacy_audit.one_run_bound import audit_scores, ceiling, epsilon_lower_bound

from audit_checks import assert_failed_audit_is_reported_and_signed

REFERENCE = Path(__file__).parent / "fixtures" / "one_run_audit_reference.json"


def test_bound_equals_jax_privacy_reference_values():
    cases = json.loads(REFERENCE.read_text())["cases"]
    assert len(cases) >= 10 and any(c["epsilon"] > 3 for c in cases) and any(c["epsilon"] == 0 for c in cases)
    for c in cases:
        ours = epsilon_lower_bound(c["m"], c["guesses"], c["correct"], c["significance"], c["delta"])
        assert ours == pytest.approx(c["epsilon"], abs=1e-4), c


def test_ceiling_of_1000_canaries_is_about_5_and_random_coins_audit_near_zero():
    assert 4.4 < ceiling(1000, 0.05, 1e-5) < 5.2  # every guess right: the most 1000 canaries can show
    rng = np.random.default_rng(0)
    coins = rng.random(1000) < 0.5
    outcome = audit_scores(rng.standard_normal(1000), coins, significance=0.05, delta=1e-5)
    assert outcome.lower_bound < 0.5  # scores that ignore the coins
    leaky = audit_scores(coins + 0.01 * rng.standard_normal(1000), coins, significance=0.05, delta=1e-5)
    assert leaky.lower_bound > 3.5 and leaky.correct == leaky.guesses


def test_audit_settings_refuse_what_cannot_be_audited():
    from simulations.run_config import load_run_config
    from shared_models.settings.run_settings import ConfigError, RunSettings

    def settings(**overrides):
        config, _ = load_run_config(REPO / "configs" / "quickstart_dp.toml", overrides)
        return RunSettings.from_config(config)

    assert settings(audit="sample").audit_canaries == 1000
    for overrides, words in [({"audit": "client"}, "dp = false"),  # quickstart_dp has dp = true
                             ({"audit": "client", "dp": False, "central-dp": "server-adaptive", "server-momentum": 0.0}, "fixed clipping"),
                             ({"audit": "sample", "dp": False, "central-dp": "server-fixed", "server-momentum": 0.0}, "audit = client"),
                             ({"audit": "sample", "data-dir": ""}, "simulated federation"),
                             ({"audit": "sample", "audit-guesses": 2000}, "audit-canaries"),
                             ({"audit": "sample", "audit-canaries": 5}, "at least 10")]:
        with pytest.raises(ConfigError, match=words):
            settings(**overrides)


def test_an_audit_with_vectorised_clients_is_refused_at_start_in_one_line(tmp_path):
    """The batched step bypasses the audit's seam (STEP_OBSERVER): the audit used to fail only mid-run."""
    from simulations.audit.run import run_audit
    from shared_models.settings.run_settings import ConfigError

    for mode, extra in [("sample", {}), ("client", {"central-dp": "off"})]:
        with pytest.raises(ConfigError) as refused:
            run_audit(REPO / "configs" / "quickstart.toml", {
                "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": mode,
                "synth-samples": 600, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 1,
                "audit": mode, "audit-canaries": 10, "vectorised-clients": True, **extra})
        message = str(refused.value)
        assert message.startswith("run-config audit = '" + mode + "': not with vectorised-clients = true")
        assert "\n" not in message
        assert not (tmp_path / "runs").exists() and not (tmp_path / "fer").exists()  # nothing ran, nothing written


# ---- audits of real runs (Flower simulations): client-level canaries on a tiny face federation ----------------

REPO = Path(__file__).resolve().parents[1]
CANARIES = 200  # every guess right at delta 1e-5: a bound of at most about 2.4


def tiny_audit(tmp_path: Path, name: str, **overrides) -> dict:
    from simulations.audit.run import run_audit

    run_dir = run_audit(REPO / "configs" / "quickstart_dp.toml", {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
        "synth-samples": 600, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 2,
        "dp": False, "eval-dp-noise-multiplier": 0.0, "divergence-rounds": 0, "audit": "client",
        "server-momentum": 0.0,  # refused with central-dp; off in the no-DP run too, so the runs compare
        "audit-canaries": CANARIES, "central-dp-delta": 1e-5, **overrides})
    return json.loads((run_dir / "audit.json").read_text()) | {"run_dir": str(run_dir)}


@pytest.mark.slow
def test_no_dp_run_audits_well_above_a_dp_run_at_epsilon_2_which_stays_below_2(tmp_path):
    from simulations.audit.run import central_noise_for

    open_run = tiny_audit(tmp_path, "nodp")
    z = central_noise_for(2.0, releases=2, delta=1e-5)
    private = tiny_audit(tmp_path, "eps2", **{"central-dp": "server-fixed", "central-dp-noise-multiplier": z})
    assert open_run["claimed_epsilon"] is None and open_run["mechanism"].startswith("none")
    assert private["claimed_epsilon"] == pytest.approx(2.0, abs=0.01)
    print(f"no DP: {open_run['correct']}/{open_run['guesses']} right, bound {open_run['lower_bound']:.2f} "
          f"(ceiling {open_run['ceiling']:.2f}); epsilon 2 (z {z:.2f}): {private['correct']}/{private['guesses']}, "
          f"bound {private['lower_bound']:.2f}")
    assert open_run["lower_bound"] > private["lower_bound"] + 1.0
    # every in-canary scores above every out-canary; the bound then depends only on how many coins came up 1
    # (fewer than 100 in 200 caps the k = 100 guesses below 100 right), so it is not compared with the ceiling
    coins, scores = np.array(open_run["coins"], dtype=bool), np.array(open_run["scores"])
    assert scores[coins].min() > scores[~coins].max() and open_run["lower_bound"] > 1.5
    assert private["lower_bound"] <= 2.0 and private["passed"]
    assert len(private["scores"]) == len(private["coins"]) == CANARIES and set(private["coins"]) == {0, 1}


@pytest.mark.slow
def test_a_mechanism_that_drops_its_noise_is_caught_and_the_report_marks_the_audit_failed(tmp_path, monkeypatch):
    # TEST-ONLY fault: the coordinator's client-level DP adds no noise, while its account still claims epsilon 1.
    from server.privacy import central_dp
    from simulations.audit.run import central_noise_for

    monkeypatch.setattr(central_dp.WRAPPERS["server-fixed"], "_add_noise_to_aggregated_arrays", lambda self, arrays: arrays)
    z = central_noise_for(1.0, releases=2, delta=1e-5)
    broken = tiny_audit(tmp_path, "broken", **{"central-dp": "server-fixed", "central-dp-noise-multiplier": z})
    print(f"noise dropped, claimed {broken['claimed_epsilon']:.2f}: bound {broken['lower_bound']:.2f}")
    assert broken["claimed_epsilon"] == pytest.approx(1.0, abs=0.01)
    assert_failed_audit_is_reported_and_signed(broken)


# Sample-level audits (white-box gradient canaries): tests/test_audit_sample.py


# ---- the client canaries' length (issue 23 at 50 hospitals: norm-1 canaries drowned in unclipped updates) -------

def _train_message(arrays: dict, server_round: int):
    import time

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict
    from shared_models import messages as msgs

    content = RecordDict({msgs.ARRAYS: ArrayRecord({n: Array(a) for n, a in arrays.items()}),
                          msgs.CONFIG: ConfigRecord({msgs.SERVER_ROUND: server_round})})
    return Message(content=content, metadata=Metadata(
        run_id=7, message_id=f"m-{time.time_ns()}", src_node_id=1, dst_node_id=0, reply_to_message_id="",
        group_id="", created_at=time.time(), ttl=3600.0, message_type="train"))


def test_a_client_canary_sends_its_direction_at_the_plans_canary_norm_not_the_clipping_norm(tmp_path, monkeypatch):
    from shared_models import messages as msgs
    from simulations.audit import canary_app, plan as plans

    arrays = {"head.weight": np.zeros((7, 30), dtype=np.float32), "head.bias": np.ones(7, dtype=np.float32)}
    plan = {"mode": "client", "hospitals": 2, "clipping_norm": 1.0, "canary_norm": 7.5, "num_examples": 10,
            "canaries": [{"node": 2, "seed": 11}, {"node": 3, "seed": 12}], "coins": [1, 0]}
    plans.write_plan(plan, tmp_path / "plan.json")
    monkeypatch.setenv(plans.PLAN_ENV, str(tmp_path / "plan.json"))
    canary_app.plan.cache_clear()
    try:
        for index, expected in [(0, 7.5), (1, 0.0)]:
            reply = canary_app._canary_reply(_train_message(arrays, 2), index, _context(2 + index, "a"))
            sent = reply.content[msgs.ARRAYS]
            update = np.concatenate([(sent[n].numpy().astype(np.float64) - a).ravel() for n, a in arrays.items()])
            assert np.linalg.norm(update) == pytest.approx(expected, rel=1e-5)
            if expected:  # along the canary's own direction
                direction = np.concatenate([d.ravel() for d in plans.canary_direction(11, [a.shape for a in arrays.values()])])
                assert float(update @ direction) == pytest.approx(expected, rel=1e-5)
    finally:
        canary_app.plan.cache_clear()


def _context(partition: int, marker: str):
    from flwr.app import Context, RecordDict

    return Context(run_id=7, node_id=partition + 1, node_config={"partition-id": partition, "num-partitions": 4},
                   state=RecordDict(), run_config={"marker": marker})


def test_canaries_answering_in_threads_each_measure_honest_norms_with_their_own_context(tmp_path, monkeypatch):
    """The measuring canary's context was a process global: a second canary's thread overwrote it mid-measurement."""
    import threading
    import time

    from flwr.app import Array, ArrayRecord, Message, RecordDict
    from shared_models import messages as msgs
    from simulations.audit import canary_app, plan as plans

    arrays = {"head.bias": np.zeros(7, dtype=np.float32)}
    plan = {"mode": "client", "hospitals": 2, "clipping_norm": 1.0, "canary_norm": None, "num_examples": 10,
            "norm_hospitals": [0, 1], "canaries": [{"node": 2, "seed": 11}, {"node": 3, "seed": 12}], "coins": [1, 1]}
    plans.write_plan(plan, tmp_path / "plan.json")
    monkeypatch.setenv(plans.PLAN_ENV, str(tmp_path / "plan.json"))
    monkeypatch.setattr(canary_app, "_NORMS", {})
    canary_app.plan.cache_clear()
    measured_with, second = [], threading.Thread(
        target=lambda: canary_app.train(_train_message(arrays, 2), _context(3, "b")))

    def hospital(msg, context):  # the honest node's training, reduced to what the measurement reads: its update
        measured_with.append((context.node_config["partition-id"], context.run_config["marker"]))
        if len(measured_with) == 1:  # the second canary starts measuring while the first is half-way
            second.start()
            time.sleep(0.5)
        got = msg.content[msgs.ARRAYS]
        return Message(RecordDict({msgs.ARRAYS: ArrayRecord({n: Array(got[n].numpy() + 1) for n in got.keys()})}),
                       reply_to=msg)

    monkeypatch.setattr(canary_app.node, "app", hospital)
    try:
        reply = canary_app.train(_train_message(arrays, 2), _context(2, "a"))
        second.join(60)
    finally:
        canary_app.plan.cache_clear()
    assert measured_with == [(0, "a"), (1, "a")]  # the first canary's own run config for both hospitals
    assert not reply.has_error()
    norms = json.loads(plans.norms_path(tmp_path / "plan.json").read_text())["2"]
    assert norms["norms"] == pytest.approx([7 ** 0.5, 7 ** 0.5])  # measured once per round, shared by the second


def test_client_canary_norm_is_the_clipping_norm_under_central_dp_and_measured_or_set_without():
    from simulations.audit.plan import client_canary_norm
    from simulations.run_config import load_run_config
    from shared_models.settings.run_settings import ConfigError, RunSettings

    def settings(**overrides):
        config, _ = load_run_config(REPO / "configs" / "quickstart_dp.toml", {
            "audit": "client", "dp": False, "server-momentum": 0.0, **overrides})
        return RunSettings.from_config(config)

    central = {"central-dp": "server-fixed", "central-dp-clipping-norm": 0.5}
    assert client_canary_norm(settings(**central))[0] == 0.5
    assert client_canary_norm(settings(**central, **{"audit-canary-norm": 0.5}))[0] == 0.5
    with pytest.raises(ConfigError, match="audit-canary-norm.*central-dp-clipping-norm"):
        settings(**central, **{"audit-canary-norm": 3.0})  # a longer canary would test a weaker claim than made
    assert client_canary_norm(settings())[0] is None  # measured every round
    assert client_canary_norm(settings(**{"audit-canary-norm": 4.0}))[0] == 4.0
    with pytest.raises(ConfigError, match="audit-canary-norm"):
        settings(**{"audit-canary-norm": -1.0})


@pytest.mark.slow
def test_without_central_dp_canaries_are_as_long_as_the_median_honest_update_of_their_round(tmp_path):
    # lr 1 without clipping: honest updates many times the clipping norm (1), which would drown norm-1 canaries
    audit = tiny_audit(tmp_path, "measured", **{"learning-rate": 1.0, "audit-canaries": 40, "num-server-rounds": 2})
    norms = audit["honest_update_norms_by_round"]
    assert sorted(norms) == ["1", "2"] and audit["canary_norm_by_round"].keys() == norms.keys()
    for r, measured in norms.items():
        assert measured["hospitals"] == [0, 1, 2] and len(measured["norms"]) == 3
        assert audit["canary_norm_by_round"][r] == pytest.approx(float(np.median(measured["norms"])))
        assert audit["canary_norm_by_round"][r] > 3 * audit["clipping_norm"]
    coins, scores = np.array(audit["coins"], dtype=bool), np.array(audit["scores"])
    assert scores[coins].min() > scores[~coins].max()  # not drowned: every in-canary scores above every out-canary
    assert audit["lower_bound"] > 0
    assert not list((tmp_path / "runs" / ".audit-plans").iterdir())  # the measured norms live in audit.json only
