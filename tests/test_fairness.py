"""Fairness per demographic group: metrics against Fairlearn/sklearn, intervals, suppression, noised counts, reweighting."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import accuracy_score, f1_score, recall_score

from client.privacy.group_counts import release_noised_counts
from shared_models.privacy_ledger import ADD_REMOVE, BudgetExceeded, PrivacyLedger, epsilon_of
from server.report.fairness import confusion_statistics, fairness_history, fairness_view
from shared_models.demographic_groups import COUNT_SENSITIVITY, group_schema
from shared_models.taxonomy import EMOTIONS, NUM_EMOTIONS

K = NUM_EMOTIONS


def random_confusion(rng: np.random.Generator, n: int, accuracy: float) -> np.ndarray:
    truth = rng.integers(0, K, n)
    pred = np.where(rng.random(n) < accuracy, truth, rng.integers(0, K, n))
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    return confusion


def labels_of(groups: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test's own expansion of counts into one (true, predicted, group) row per sample."""
    rows = [(t, p, g) for g, c in groups.items() for t in range(K) for p in range(K) for _ in range(int(c[t, p]))]
    y_true, y_pred, group = zip(*rows)
    return np.array(y_true), np.array(y_pred), np.array(group, dtype=object)


def test_view_equals_fairlearn_and_sklearn_on_the_expanded_labels():
    rng = np.random.default_rng(1)
    counts = {"caucasian": random_confusion(rng, 400, 0.7), "african_american": random_confusion(rng, 150, 0.45),
              "asian": random_confusion(rng, 90, 0.6)}
    view = fairness_view({"race": {g: c.tolist() for g, c in counts.items()}}, min_group_size=20, gap_threshold=0.1)
    race = view["race"]
    y_true, y_pred, group = labels_of(counts)

    frame = MetricFrame(metrics={"accuracy": accuracy_score,
                                 "macro_f1": lambda t, p: f1_score(t, p, average="macro", zero_division=0)},
                        y_true=y_true, y_pred=y_pred, sensitive_features=group)
    for g in counts:
        assert race["groups"][g]["n"] == counts[g].sum()
        assert race["groups"][g]["accuracy"] == pytest.approx(frame.by_group.loc[g, "accuracy"])
        assert race["groups"][g]["macro_f1"] == pytest.approx(frame.by_group.loc[g, "macro_f1"])
        in_g = group == g
        for k, emotion in enumerate(EMOTIONS):
            assert race["groups"][g]["recall"][emotion] == pytest.approx(
                recall_score(y_true[in_g] == k, y_pred[in_g] == k))
            negatives = y_true[in_g] != k
            assert race["groups"][g]["false_positive_rate"][emotion] == pytest.approx(
                np.mean(y_pred[in_g][negatives] == k))
            assert race["groups"][g]["predicted_rate"][emotion] == pytest.approx(np.mean(y_pred[in_g] == k))
    assert race["worst_group"]["group"] == frame.by_group["accuracy"].idxmin() == "african_american"
    assert race["accuracy_gap"]["value"] == pytest.approx(frame.difference()["accuracy"])
    assert race["accuracy_ratio"]["value"] == pytest.approx(frame.ratio()["accuracy"])
    # Every group has every class here, so Fairlearn's binary metrics apply one-vs-rest directly.
    eod = max(equalized_odds_difference(y_true == k, y_pred == k, sensitive_features=group) for k in range(K))
    dpd = max(demographic_parity_difference(y_true == k, y_pred == k, sensitive_features=group) for k in range(K))
    assert race["equalized_odds_difference"]["value"] == pytest.approx(eod)
    assert race["predicted_rate_difference"]["value"] == pytest.approx(dpd)
    assert race["flagged"] and "african_american" in race["flag_reason"]
    assert "one-vs-rest" in race["multiclass_method"]
    json.dumps(view)  # plain JSON, no numpy

    # The bootstrap replicates use a vectorised form of the same statistics: equal at the observed counts.
    stats = confusion_statistics(np.stack(list(counts.values())))
    assert stats["accuracy_gap"] == pytest.approx(race["accuracy_gap"]["value"])
    assert stats["accuracy_ratio"] == pytest.approx(race["accuracy_ratio"]["value"])
    assert stats["equalized_odds_difference"] == pytest.approx(eod)
    assert stats["predicted_rate_difference"] == pytest.approx(dpd)
    assert stats["macro_f1"] == pytest.approx([race["groups"][g]["macro_f1"] for g in counts])


def test_small_groups_are_suppressed_and_left_out_of_gaps():
    rng = np.random.default_rng(2)
    groups = {"male": random_confusion(rng, 200, 0.6), "female": random_confusion(rng, 180, 0.7),
              "unsure": random_confusion(rng, 7, 0.0), "unknown": np.zeros((K, K), int)}
    view = fairness_view({"sex": {g: c.tolist() for g, c in groups.items()}}, min_group_size=10, gap_threshold=0.5)
    sex = view["sex"]
    assert sex["suppressed_groups"] == ["unsure", "unknown"]
    assert sex["groups"]["unsure"] == {"n": None, "suppressed": True}  # not even its size is shown
    assert list(sex["groups"]) == ["female", "male", "unsure", "unknown"]  # the schema's order
    assert sex["worst_group"]["group"] == "male"  # "unsure" (accuracy 0) is suppressed, not the worst group
    assert set(sex["accuracy_gap"]["between"]) == {"male", "female"} and not sex["flagged"]

    only_one = fairness_view({"sex": {"male": groups["male"].tolist(), "unsure": groups["unsure"].tolist()}},
                             min_group_size=10, gap_threshold=0.1)["sex"]
    assert only_one["accuracy_gap"]["value"] is None and only_one["worst_group"]["group"] == "male"
    nothing = fairness_view({"sex": {"unsure": groups["unsure"].tolist()}}, min_group_size=10, gap_threshold=0.1)
    assert nothing["sex"]["worst_group"]["group"] is None and not nothing["sex"]["flagged"]


def test_intervals_contain_the_estimate_and_narrow_with_more_samples():
    rng = np.random.default_rng(3)
    base = {"caucasian": random_confusion(rng, 120, 0.7), "african_american": random_confusion(rng, 60, 0.5),
            "asian": random_confusion(rng, 80, 0.6)}

    def view(scale: int) -> dict:
        return fairness_view({"race": {g: (c * scale).tolist() for g, c in base.items()}},
                             min_group_size=10, gap_threshold=0.1)["race"]

    small, large = view(1), view(8)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    for v in (small, large):
        for g in base:
            for metric in ("accuracy", "macro_f1"):
                lo, hi = v["groups"][g][f"{metric}_ci"]
                assert lo <= v["groups"][g][metric] <= hi
        for key in ("accuracy_gap", "accuracy_ratio", "equalized_odds_difference", "predicted_rate_difference"):
            lo, hi = v[key]["ci"]
            assert lo <= v[key]["value"] <= hi, key
    for g in base:
        assert width(large["groups"][g]["accuracy_ci"]) < width(small["groups"][g]["accuracy_ci"]) / 2
        assert width(large["groups"][g]["macro_f1_ci"]) < width(small["groups"][g]["macro_f1_ci"]) / 2
    for key in ("accuracy_gap", "accuracy_ratio", "predicted_rate_difference"):
        assert width(large[key]["ci"]) < width(small[key]["ci"]) / 2, key
    assert large["accuracy_gap"]["value"] == pytest.approx(small["accuracy_gap"]["value"])  # same proportions
    # Reproducible: fixed bootstrap seed.
    assert view(1) == small


def test_multiclass_equalized_odds_leaves_out_groups_without_the_class():
    rng = np.random.default_rng(4)
    a, b = random_confusion(rng, 300, 0.8), random_confusion(rng, 300, 0.5)
    disgust = EMOTIONS.index("disgust")
    a[disgust, :] = 0  # group a has no disgust samples: its disgust recall is undefined, not 0
    race = fairness_view({"race": {"a": a.tolist(), "b": b.tolist()}}, min_group_size=10, gap_threshold=0.1)["race"]
    assert race["groups"]["a"]["recall"]["disgust"] is None
    assert race["groups"]["b"]["recall"]["disgust"] is not None

    y_true, y_pred, group = labels_of({"a": a, "b": b})
    expected = 0.0
    for k in range(K):
        tprs = [recall_score(y_true[group == g] == k, y_pred[group == g] == k) for g in ("a", "b")
                if (y_true[group == g] == k).any()]
        fprs = [np.mean(y_pred[(group == g) & (y_true != k)] == k) for g in ("a", "b")]
        expected = max(expected, max(tprs) - min(tprs), max(fprs) - min(fprs))
    assert race["equalized_odds_difference"]["value"] == pytest.approx(expected)
    lo, hi = race["equalized_odds_difference"]["ci"]
    assert lo <= expected <= hi
    # Fairlearn alone would score group a's missing disgust as recall 0 and report a different (wrong) figure.
    naive = equalized_odds_difference(y_true == disgust, y_pred == disgust, sensitive_features=group)
    assert naive >= race["groups"]["b"]["recall"]["disgust"] > 0


def test_history_has_one_entry_per_round_with_groups_and_flags_large_gaps():
    rng = np.random.default_rng(5)
    fair = {"male": random_confusion(rng, 300, 0.6).tolist(), "female": random_confusion(rng, 300, 0.6).tolist()}
    unfair = {"male": random_confusion(rng, 300, 0.8).tolist(), "female": random_confusion(rng, 300, 0.4).tolist()}
    history = fairness_history([{"round": 0, "groups": {"sex": fair}}, {"round": 1},
                                {"round": 2, "groups": {"sex": unfair}}], min_group_size=10, gap_threshold=0.15)
    assert [h["round"] for h in history] == [0, 2]
    assert not history[0]["sex"]["flagged"] and history[1]["sex"]["flagged"]
    view = fairness_view({"sex": unfair}, min_group_size=10, gap_threshold=0.15)["sex"]
    assert history[1]["sex"]["accuracy_gap"] == pytest.approx(view["accuracy_gap"]["value"])
    assert history[1]["sex"]["worst_group_accuracy"] == pytest.approx(view["worst_group"]["accuracy"])


def test_noised_counts_are_declined_past_the_budget_and_spend_nothing(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=0.5, delta=1e-5)
    counts = {"sex": np.ones((4, K, K), dtype=np.int64), "race": np.ones((4, K, K), dtype=np.int64)}
    with pytest.raises(BudgetExceeded):
        release_noised_counts(counts, ledger=ledger, run="r", server_round=0, noise_multiplier=1.0)
    assert ledger.events == []
    noised, event = release_noised_counts(counts, ledger=ledger, run="r", server_round=0, noise_multiplier=40.0)
    assert event.kind == "eval-counts" and event.steps == 2 and event.sample_rate == 1.0
    assert all(v.dtype == np.int64 and v.shape == (4, K, K) for v in noised.values())
    assert any((v < 0).any() for v in noised.values())  # sigma 40 on cells of 1: negatives are sent, not clipped


def test_ledger_files_without_event_kind_still_load(tmp_path):
    path = tmp_path / "privacy_ledger.json"
    path.write_text(json.dumps({"schema_version": 1, "dataset_id": "d", "accountant": "rdp",
                                "budget": {"epsilon": 8.0, "delta": 1e-5},
                                "events": [{"run": "1", "round": 1, "noise_multiplier": 1.0, "sample_rate": 0.1,
                                            "steps": 10, "accountant": "rdp", "max_grad_norm": 1.0,
                                            "epsilon_after": 1.0, "time": 0.0}]}))
    ledger = PrivacyLedger.load(path)
    assert ledger.events[0].kind == "train" and ledger.summary()["runs"]["1"]["rounds"] == 1


def test_weighted_loss_keeps_opacus_per_sample_gradients_per_sample():
    """Each sample's gradient under the weighted loss is its weight times its unweighted gradient."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    x, y = torch.randn(6, 5, requires_grad=True), torch.randint(0, K, (6,))
    w = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25, 1.0])
    linear, grads = torch.nn.Linear(5, K), []
    for weights in (None, w):
        model = GradSampleModule(copy.deepcopy(linear))
        losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
        (losses * weights if weights is not None else losses).mean().backward()
        grads.append(model._module.weight.grad_sample.clone())
    assert torch.allclose(grads[1], grads[0] * w[:, None, None], atol=1e-6)


# --------------------------------------------------------------------------- real Flower simulations
REPO = Path(__file__).resolve().parents[1]


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tiny_run(tmp_path: Path, name: str, **overrides) -> Path:
    from simulations.simulate import run_simulation

    return run_simulation(None, {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
        "synth-samples": 300, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 1,
        "batch-size": 16, **overrides})


@pytest.mark.slow
def test_simulation_writes_group_counts_that_sum_to_the_global_confusion(tmp_path):
    rounds = read_rounds(tiny_run(tmp_path, "groups"))
    schema = group_schema("fer2013")
    assert [r["round"] for r in rounds] == [0, 1]
    for entry in rounds:
        assert len(entry["evaluate"]["clients"]) == 3 and not entry["evaluate"]["failures"]
        assert "groups_dp" not in entry
        assert {a: set(g) for a, g in entry["groups"].items()} == {a: set(g) for a, g in schema.items()}
        total = np.asarray(entry["confusion"]["counts"])
        for attribute, by_group in entry["groups"].items():
            assert np.array_equal(sum(np.asarray(c) for c in by_group.values()), total), attribute
        # The synthetic FER2013 sidecar annotates every face: no "unknown" race, several real groups.
        assert np.asarray(entry["groups"]["race"]["unknown"]).sum() == 0
        assert sum(np.asarray(c).sum() > 0 for c in entry["groups"]["race"].values()) >= 2
    view = fairness_view(rounds[-1]["groups"], min_group_size=5, gap_threshold=0.2)
    assert set(view) == {"sex", "age", "race"}
    assert list(view["age"]["groups"]) == list(schema["age"])  # the schema's order (JSON lines sort keys)


@pytest.mark.slow
def test_noised_counts_under_dp_spend_from_the_ledger_and_nothing_exact_is_released(tmp_path):
    sigma = 8.0
    run_dir = tiny_run(tmp_path, "dpfair", **{
        "dp": True, "dp-epsilon": 6.0, "state-dir": str(tmp_path / "state"),
        "eval-dp-noise-multiplier": sigma})
    rounds = read_rounds(run_dir)
    assert [r["round"] for r in rounds] == [0, 1]
    assert len(rounds[1]["train"]["clients"]) == 3 and not rounds[1]["train"]["failures"]
    # Under DP the nodes keep their training loss and sample counts (neither is accounted).
    assert all("train_loss" not in c and "skipped" not in c for c in rounds[1]["train"]["clients"])
    n_attributes = len(group_schema("fer2013"))
    for entry in rounds:
        assert not entry["evaluate"]["failures"]
        assert entry["groups_dp"]["noise_multiplier"] == sigma
        assert entry["groups_dp"]["sensitivity"] == COUNT_SENSITIVITY  # sqrt 3: confusion + calibration cells
        for by_group in entry["groups"].values():  # sums of unclipped noised cells: integers, negatives allowed
            assert all(isinstance(v, int) for c in by_group.values() for row in c for v in row)
        assert entry["groups_dp"]["cell_noise_variance"] == pytest.approx(3 * ((sigma * COUNT_SENSITIVITY) ** 2 + 1 / 12))
        # The global confusion is post-processing of the noised groups (each node's mean over attributes of
        # their group sums, rounded: within half a count per node of the mean of the summed groups); no exact
        # loss was sent.
        total = np.asarray(entry["confusion"]["counts"])
        per_attribute = [sum(np.asarray(c, dtype=np.float64) for c in by_group.values())
                         for by_group in entry["groups"].values()]
        nodes = entry["groups_dp"]["noised_nodes"]
        assert len(per_attribute) == n_attributes
        assert np.all(np.abs(np.mean(per_attribute, axis=0) - total) <= 0.5 * nodes + 1e-9)
        assert entry["loss"] is None
    for client in rounds[1]["train"]["clients"]:
        ledger = PrivacyLedger.load(tmp_path / "state" / f"client-{client['client']}" / "privacy_ledger.json")
        kinds = [e.kind for e in ledger.events]
        assert kinds == ["eval-counts", "train", "eval-counts"]  # round 0 evaluation, round 1 training, evaluation
        for e in ledger.events:
            if e.kind == "eval-counts":
                assert (e.noise_multiplier, e.sample_rate, e.steps) == (sigma, 1.0, n_attributes)
        # The count releases have their own epsilon (add/remove, dp-accounting's PLD), recomputed here.
        eval_events = [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.events if e.kind == "eval-counts"]
        assert ledger.spent("eval-counts") == pytest.approx(epsilon_of(eval_events, ledger.delta, "pld", ADD_REMOVE))
        assert ledger.events[-1].epsilon_after == pytest.approx(ledger.spent("eval-counts"))
        assert rounds[-1]["groups_dp"]["epsilon_by_client"][client["client"]] == pytest.approx(
            ledger.spent("eval-counts"))
        assert ledger.spent() <= 6.0 and ledger.spent("eval-counts") <= 6.0


def fixed_confusion(n: int, correct: int) -> np.ndarray:
    """n samples, exactly ``correct`` of them right, spread over the emotions (deterministic)."""
    confusion = np.zeros((K, K), dtype=np.int64)
    for i in range(n):
        true = i % K
        confusion[true, true if i < correct else (true + 1) % K] += 1
    return confusion


def test_differences_between_groups_are_signed_and_their_interval_can_include_zero():
    """Two equally served groups: the absolute gap's bootstrap interval cannot include 0 (it made a 1.7 pp gap
    read as real); the signed difference's interval does, and the page's verdict says no clear difference."""
    groups = {"female": fixed_confusion(1200, 732), "male": fixed_confusion(1100, 652)}  # 61.0% vs 59.3%
    sex = fairness_view({"sex": {g: c.tolist() for g, c in groups.items()}}, min_group_size=20,
                        gap_threshold=0.1)["sex"]
    gap = sex["accuracy_gap"]
    assert gap["value"] == pytest.approx(732 / 1200 - 652 / 1100)
    assert gap["ci"][0] > 0  # the old interval of |gap|: never includes 0
    assert gap["difference_ci"][0] < 0 < gap["difference_ci"][1]
    assert gap["verdict"] == "no_clear_difference" and not sex["flagged"]
    female, male = sex["groups"]["female"]["difference_from_rest"], sex["groups"]["male"]["difference_from_rest"]
    assert female["value"] == pytest.approx(-male["value"]) and female["value"] > 0  # signed: group minus the rest
    assert female["rest"] == ["male"] and female["ci"][0] < 0 < female["ci"][1]
    assert female["verdict"] == male["verdict"] == "no_clear_difference"


def test_small_groups_are_too_few_to_conclude_and_raise_no_flag():
    """25 vs 25 samples with a 16 pp gap (above the 10 pp threshold) used to be flagged; its interval is 50 pp
    wide, so it is "too few to conclude", the flag stays down (also in the history), and equalized odds is
    marked inconclusive. A large clear gap is still flagged, by the same rule."""
    small = {"female": fixed_confusion(25, 17).tolist(), "male": fixed_confusion(25, 13).tolist()}
    for noise in (None, {"cell_noise_variance": 4.0, "noise_multiplier": 2.0}):
        sex = fairness_view({"sex": small}, min_group_size=20, gap_threshold=0.1, count_noise=noise)["sex"]
        gap = sex["accuracy_gap"]
        assert gap["value"] == pytest.approx(0.16) and not sex["flagged"], noise  # above the threshold, yet no flag
        assert gap["difference_ci"][1] - gap["difference_ci"][0] > 0.2
        assert gap["verdict"] == "too_few_to_conclude" and not sex["flagged"] and sex["flag_reason"] is None
        assert sex["groups"]["male"]["difference_from_rest"]["verdict"] == "too_few_to_conclude"
        assert sex["equalized_odds_difference"]["conclusive"] is False
    history = fairness_history([{"round": 1, "groups": {"sex": small}}], min_group_size=20, gap_threshold=0.1)
    assert history[0]["sex"]["accuracy_gap"] == pytest.approx(0.16) and not history[0]["sex"]["flagged"]

    large = {"female": fixed_confusion(1000, 800).tolist(), "male": fixed_confusion(1000, 500).tolist()}
    sex = fairness_view({"sex": large}, min_group_size=20, gap_threshold=0.1)["sex"]
    assert sex["accuracy_gap"]["verdict"] == "above_threshold" and sex["flagged"]
    assert sex["accuracy_gap"]["difference_ci"][0] > 0.1 and "lies above the threshold 10.0 pp" in sex["flag_reason"]
    assert sex["groups"]["male"]["difference_from_rest"]["ci"][1] < -0.1
    assert fairness_history([{"round": 1, "groups": {"sex": large}}], min_group_size=20,
                            gap_threshold=0.1)[0]["sex"]["flagged"]
