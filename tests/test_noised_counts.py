"""Noised evaluation counts: summed unclipped (unbiased), clipped only for display, intervals with the noise.

Issue 19, finding 8: nodes clipped every noised cell at 0 before sending, so
the coordinator's sums were biased upwards (a 72-row test split read about
230 at sigma 2). Here the node's own ``noised_counts`` builds each release
and the reply's metrics are put together as ``evaluate_global`` does; the
coordinator's ``aggregate_evaluation`` (Flower's evaluate_metrics_aggr_fn)
and ``group_summary`` (metrics.jsonl) sum them, and the report's fairness
view reads the sums.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict

from client.privacy.group_counts import group_count_metrics, noised_counts, overall_confusion
from server.rounds.global_metrics import aggregate_evaluation, classification_metrics, group_summary
from shared_models import messages as msgs
from shared_models.demographic_groups import COUNT_SENSITIVITY, group_schema
from shared_models.taxonomy import NUM_EMOTIONS

K = NUM_EMOTIONS
DATASET = "fer2013"
SIGMA = 2.0


def node_split(rows: int, seed: int, accuracy: float = 0.6) -> dict[str, np.ndarray]:
    """Attribute -> (groups, 7, 7) confusion of one node's test split of ``rows`` records."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, K, rows)
    pred = np.where(rng.random(rows) < accuracy, truth, rng.integers(0, K, rows))
    out = {}
    for attribute, groups in group_schema(DATASET).items():
        group = rng.integers(0, len(groups), rows)
        counts = np.zeros((len(groups), K, K), dtype=np.int64)
        np.add.at(counts, (group, truth, pred), 1)
        out[attribute] = counts
    return out


def noised_reply(split: dict[str, np.ndarray], sigma: float = SIGMA) -> MetricRecord:
    """The evaluation reply's metrics of a node that noises its counts (client_app.evaluate_global's keys)."""
    noised = noised_counts(split, sigma)
    confusion = overall_confusion(noised)
    metrics = {msgs.NUM_EXAMPLES: int(confusion.sum()), msgs.CONFUSION: [int(v) for v in confusion.ravel()],
               msgs.GROUP_DP_NOISE_MULTIPLIER: sigma, msgs.GROUP_DP_EPSILON_SPENT: 1.0}
    metrics.update(group_count_metrics(noised, DATASET))
    return MetricRecord(metrics)


def test_the_coordinators_summed_total_of_noised_counts_is_unbiased():
    split = node_split(72, seed=0)
    first = next(iter(split))
    releases = 400
    totals, group_sums = [], []
    for _ in range(releases):
        reply = noised_reply(split)
        totals.append(aggregate_evaluation([RecordDict({"metrics": reply})], "num-examples")["eval-examples"])
        group_sums.append(np.array(group_summary([("0", reply)])["groups"][first]["unknown"]))
    # The total sums every cell of the first attribute's groups, each with noise of variance
    # (sigma x sensitivity)^2 + 1/12.
    cells = split[first].size
    standard_error = np.sqrt(cells * ((SIGMA * COUNT_SENSITIVITY) ** 2 + 1 / 12) / releases)
    assert abs(np.mean(totals) - 72) < 4 * standard_error, f"mean total {np.mean(totals):.1f} for 72 rows"
    # Every summed cell is unbiased too, an empty one included (clipping at 0 made it about 0.4 sigma).
    exact = split[first][list(group_schema(DATASET)[first]).index("unknown")]
    cell_error = np.sqrt(((SIGMA * COUNT_SENSITIVITY) ** 2 + 1 / 12) / releases)
    assert np.all(np.abs(np.mean(group_sums, axis=0).reshape(K, K) - exact) < 4.5 * cell_error)


def test_negative_noised_cells_are_sent_and_summed_and_recorded_with_their_variance():
    split = node_split(72, seed=1)
    replies = [("0", noised_reply(split)), ("1", noised_reply(split, sigma=3.0))]
    summary = group_summary(replies)
    sums = [v for by_group in summary["groups"].values() for c in by_group.values() for row in c for v in row]
    assert min(sums) < 0  # noised sums of empty cells go below 0 and stay there
    assert summary["groups_dp"]["cell_noise_variance"] == pytest.approx(
        (2.0 ** 2 + 3.0 ** 2) * COUNT_SENSITIVITY ** 2 + 2 / 12)


def test_displayed_figures_are_clipped():
    # A noised sum whose raw ratios stray out of [0, 1]: 40 correct of 38 in total, a negative cell.
    confusion = np.zeros((K, K), dtype=np.int64)
    confusion[0, 0], confusion[1, 1], confusion[0, 1], confusion[2, 3] = 30, 10, -1, -1
    metrics = classification_metrics(confusion)
    assert metrics["accuracy"] == 1.0 and 0.0 <= metrics["macro-f1"] <= 1.0 and 0.0 <= metrics["uar"] <= 1.0

    from server.report.fairness import fairness_history, fairness_view

    groups = {"sex": {"female": confusion.tolist(), "male": (np.eye(K, dtype=np.int64) * 5 + 1).tolist()}}
    view = fairness_view(groups, min_group_size=10, gap_threshold=0.1,
                         count_noise={"noise_multiplier": SIGMA, "cell_noise_variance": SIGMA ** 2 + 1 / 12})["sex"]
    female = view["groups"]["female"]
    assert female["n"] == 38  # the unclipped sum: unbiased
    assert female["accuracy"] == 1.0 and 0.0 <= female["accuracy_ci"][0] <= female["accuracy_ci"][1] <= 1.0
    assert min(v for row in female["confusion"] for v in row) == 0  # shown clipped
    assert all(0.0 <= r <= 1.0 for r in female["recall"].values() if r is not None)
    with pytest.raises(ValueError, match="negative"):  # negative cells without the round's noise: not counts
        fairness_view(groups, min_group_size=10, gap_threshold=0.1)
    # The gap history reads each round's own noise record, and shows the same clipped figures.
    history = fairness_history([{"round": 1, "groups": groups, "groups_dp": {"noise_multiplier": SIGMA}}],
                               min_group_size=10, gap_threshold=0.1)
    assert history[0]["sex"]["groups"]["female"] == {"n": 38, "accuracy": 1.0}
    assert history[0]["sex"]["accuracy_gap"] == pytest.approx(view["accuracy_gap"]["value"])


def test_intervals_widen_with_the_count_noise_and_cover_the_accuracy():
    from server.report.fairness import accuracy_interval, fairness_view, wilson_interval

    rng = np.random.default_rng(5)
    confusion = node_split(72, seed=2)["sex"].sum(axis=0)  # one node's 72 test rows
    correct, n = int(np.trace(confusion)), int(confusion.sum())
    assert accuracy_interval(confusion, 0.95) == wilson_interval(correct, n, 0.95)
    widths = [np.diff(accuracy_interval(confusion, 0.95, nodes * (SIGMA ** 2 + 1 / 12)))[0] for nodes in (0, 1, 3)]
    assert widths[0] < widths[1] < widths[2]

    # Over many releases the noised interval covers the split's own accuracy at least about as often as it
    # claims (it also covers sampling); the Wilson interval of the clipped cells, as before, rarely does.
    true_accuracy, v = correct / n, SIGMA ** 2 + 1 / 12
    covered, covered_clipped = 0, 0
    releases = 400
    for _ in range(releases):
        noised = np.rint(confusion + rng.normal(0, SIGMA, confusion.shape)).astype(np.int64)
        lo, hi = accuracy_interval(noised, 0.95, v)
        covered += lo <= true_accuracy <= hi
        clipped = np.clip(noised, 0, None)
        lo, hi = wilson_interval(int(np.trace(clipped)), int(clipped.sum()), 0.95)
        covered_clipped += lo <= true_accuracy <= hi
    assert covered / releases >= 0.93
    assert covered_clipped / releases < 0.5

    # The between-group statistics' bootstrap takes the noise too.
    groups = {"sex": {"female": (np.eye(K, dtype=np.int64) * 20 + 2).tolist(),
                      "male": (np.eye(K, dtype=np.int64) * 12 + 3).tolist()}}
    exact = fairness_view(groups, min_group_size=10, gap_threshold=0.1)["sex"]
    noisy = fairness_view(groups, min_group_size=10, gap_threshold=0.1,
                          count_noise={"noise_multiplier": SIGMA, "cell_noise_variance": 3 * v})["sex"]
    assert noisy["accuracy_gap"]["value"] == pytest.approx(exact["accuracy_gap"]["value"])
    for key in ("accuracy_gap", "equalized_odds_difference"):
        assert np.diff(noisy[key]["ci"])[0] > np.diff(exact[key]["ci"])[0]
    assert np.diff(noisy["groups"]["male"]["macro_f1_ci"])[0] > np.diff(exact["groups"]["male"]["macro_f1_ci"])[0]


def test_the_overall_confusion_averages_every_attribute_and_its_logged_variance_is_its_noise():
    """The global confusion is the mean over attributes of their noised group sums (free post-processing):
    unbiased, with the per-cell variance metrics.jsonl logs (what the report's global interval uses), which
    is below what the first attribute's groups alone would give (4 groups of sex, summed)."""
    split = node_split(72, seed=3)
    truth = next(iter(split.values())).sum(axis=0)
    nodes, releases = 3, 300
    overall, logged = [], []
    for _ in range(releases):
        replies = [("n%d" % i, noised_reply(split)) for i in range(nodes)]
        overall.append(sum(np.asarray(m[msgs.CONFUSION], dtype=np.float64) for _, m in replies))
        logged.append(group_summary(replies)["groups_dp"]["overall_cell_noise_variance"])
    overall = np.asarray(overall)
    mean_error = overall.mean(axis=0) - nodes * truth.ravel()
    assert np.all(np.abs(mean_error) < 5 * np.sqrt(logged[0] / releases))  # unbiased, every cell
    measured = overall.var(axis=0, ddof=1).mean()  # across the 49 cells, each over the releases
    assert 0.85 < measured / logged[0] < 1.15
    first_groups = len(next(iter(group_schema(DATASET).values())))
    assert measured < 0.75 * first_groups * nodes * (SIGMA * COUNT_SENSITIVITY) ** 2  # the first attribute's sum


def test_the_final_line_gives_the_noised_accuracys_interval_and_judges_the_majority_rate_by_it():
    """The console's last line under noised counts: the report's interval beside the point, and "no better
    than the majority class" only as the interval allows (a noised point below the majority rate is not
    evidence of a useless model, nor one above it of a useful one)."""
    from server.rounds.console import final_summary

    def declared(split: dict[str, np.ndarray], sigma: float) -> MetricRecord:
        """A reply declaring noise of ``sigma`` on counts left as they are: the interval is then deterministic
        (a drawn noised total of a few rows can fall to 0 or below, which has no accuracy at all)."""
        confusion = overall_confusion(split)
        metrics = {msgs.NUM_EXAMPLES: int(confusion.sum()), msgs.CONFUSION: [int(v) for v in confusion.ravel()],
                   msgs.GROUP_DP_NOISE_MULTIPLIER: sigma, msgs.GROUP_DP_EPSILON_SPENT: 1.0}
        metrics.update(group_count_metrics(split, DATASET))
        return MetricRecord(metrics)

    def entry(rows: int, sigma: float) -> dict:
        replies = [(str(i), declared(node_split(rows, seed=i, accuracy=0.9), sigma)) for i in range(4)]
        summed = sum(np.asarray(m[msgs.CONFUSION], dtype=np.float64) for _, m in replies).reshape(K, K)
        out = {"confusion": {"counts": summed.tolist()}, **group_summary(replies)}
        out["accuracy"] = classification_metrics(summed)["accuracy"]
        return out

    summary = {"rounds": 1, "planned_rounds": 1, "wall_clock_s": 1.0, "initial": {}}
    tiny, large = entry(8, 6.0), entry(2000, 1.0)  # a handful of test rows under heavy noise; many under light
    line = final_summary("r", {**summary, "final": {"accuracy": tiny["accuracy"]}}, [tiny], None)
    assert "noised counts: 95% interval" in line and "not distinguishable from always answering" in line
    line = final_summary("r", {**summary, "final": {"accuracy": large["accuracy"]}}, [large], None)
    assert "noised counts: 95% interval" in line and "most common emotion" not in line
