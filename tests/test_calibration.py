"""Calibration from counts (issue 21): ECE per group from the nodes' confidence bins, honestly noised.

The coordinator never sees a prediction, so the report's calibration must come
from counts that sum across nodes: per group and confidence bin the correct and
incorrect counts and the confidence sum. These tests score a real (trained)
linear head through the node's own ``evaluate``, and check that the ECE read
from the counts is the ECE of its predictions, that one test record moves an
attribute's release (confusion and bins) by no more than ``COUNT_SENSITIVITY``
(which the node's noise and ledger use), and that the page shows it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord
from torch.utils.data import DataLoader, TensorDataset

from client.privacy.group_counts import (group_calibration_metrics, group_count_metrics, noised_calibration,
                                 overall_calibration, release_noised_evaluation)
from client.local_training import evaluate
from server.rounds.global_metrics import calibration_summary
from shared_models.calibration_bins import ece_from_counts, ece_from_predictions
from shared_models.demographic_groups import COUNT_SENSITIVITY, group_schema
from shared_models.privacy_ledger import ADD_REMOVE, PrivacyLedger, epsilon_of
from shared_models.models.scatter_models import FaceScatterLinear

DATASET = "fer2013"
ROWS = 300


@pytest.fixture(scope="module")
def trained():
    """A face_scatter head trained a little on separable random features (confidences spread over the bins),
    the rows' labels and each attribute's group codes."""
    gen = torch.Generator().manual_seed(0)
    model = FaceScatterLinear()
    features = model.head.in_features
    centres = torch.randn(7, features, generator=gen)
    labels = torch.randint(0, 7, (ROWS,), generator=gen)
    x = centres[labels] * 0.05 + torch.randn(ROWS, features, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.002)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    rng = np.random.default_rng(1)
    groups = {attribute: (rng.integers(0, len(names), ROWS), len(names))
              for attribute, names in group_schema(DATASET).items()}
    return model, x, labels, groups


def _counts(model, x, labels, groups):
    data = TensorDataset(x, labels, torch.zeros(len(labels), 2))
    return evaluate(model, DataLoader(data, batch_size=64), n_inputs=1, device=torch.device("cpu"), groups=groups)


def test_ece_from_the_nodes_counts_equals_the_ece_of_its_predictions_overall_and_per_group(trained):
    model, x, labels, groups = trained
    counts = _counts(model, x, labels, groups)
    with torch.no_grad():
        probs = model(x).double().softmax(dim=1)  # as the node computes it
    confidence, pred = probs.max(dim=1)
    correct = (pred == labels).numpy()
    confidence = confidence.numpy()
    assert len(np.unique(np.floor(confidence * 10))) >= 3  # a real spread over the bins, not one bin
    expected = ece_from_predictions(confidence, correct)
    assert 0 < expected < 1
    assert ece_from_counts(counts.calibration) == pytest.approx(expected, abs=1e-6)
    for attribute, (codes, size) in groups.items():
        for g in range(size):
            mask = codes == g
            assert ece_from_counts(counts.group_calibration[attribute][g]) == pytest.approx(
                ece_from_predictions(confidence[mask], correct[mask]), abs=1e-6)
    # The coordinator's overall bins (mean over attributes of the groups' sums) are the node's overall bins.
    np.testing.assert_allclose(overall_calibration(counts.group_calibration), counts.calibration, atol=1e-9)
    replies = [("0", MetricRecord(group_calibration_metrics(counts.group_calibration, DATASET)))]
    summary = calibration_summary(replies, [])
    assert summary["overall"]["ece"] == pytest.approx(expected, abs=1e-6)
    assert not summary["noised"] and summary["overall"]["ece_noise_bound"] == 0


def test_one_test_record_moves_an_attributes_release_by_at_most_the_counted_sensitivity(trained):
    """Add/remove one record: its confusion cell (1), its bin's correct-or-incorrect cell (1) and its bin's
    confidence sum (its confidence) move; the L2 norm reaches past 1, the sensitivity while only the confusion
    was sent, and stays within COUNT_SENSITIVITY, with which the node noises."""
    model, x, labels, groups = trained
    full = _counts(model, x, labels, groups)
    largest = 0.0
    for removed in range(0, ROWS, 37):
        keep = np.arange(ROWS) != removed
        part = _counts(model, x[keep], labels[keep], {a: (codes[keep], n) for a, (codes, n) in groups.items()})
        for attribute in groups:
            moved = np.concatenate([(full.group_confusion[attribute] - part.group_confusion[attribute]).ravel(),
                                    (full.group_calibration[attribute] - part.group_calibration[attribute]).ravel()])
            largest = max(largest, float(np.linalg.norm(moved)))
    assert 1.0 < largest <= COUNT_SENSITIVITY + 1e-9
    assert COUNT_SENSITIVITY == pytest.approx(np.sqrt(3))


def test_the_release_noises_bins_at_the_sensitivity_and_its_epsilon_is_the_multipliers(trained, tmp_path):
    model, x, labels, groups = trained
    counts = _counts(model, x, labels, groups)
    z = 2.0
    draws = np.stack([noised_calibration(counts.group_calibration, z)["sex"] - counts.group_calibration["sex"]
                      for _ in range(200)])
    assert draws.std() == pytest.approx(z * COUNT_SENSITIVITY, rel=0.05)
    ledger = PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=8.0, delta=1e-4, accountant="pld",
                                run=("r", "r"), records=ROWS)
    confusion, calibration, event = release_noised_evaluation(
        counts.group_confusion, counts.group_calibration, ledger=ledger, run="r", server_round=0, noise_multiplier=z)
    assert set(calibration) == set(confusion) == set(groups)
    # One Gaussian mechanism per attribute, at noise std z x sensitivity: its epsilon is that of z alone.
    assert event.steps == len(groups) and event.max_grad_norm == pytest.approx(COUNT_SENSITIVITY)
    assert event.epsilon_after == pytest.approx(epsilon_of([(z, 1.0, len(groups))], 1e-4, "pld", ADD_REMOVE),
                                                rel=1e-6)
    metrics = {**group_count_metrics(confusion, DATASET), **group_calibration_metrics(calibration, DATASET)}
    summary = calibration_summary([("0", MetricRecord(metrics))], [z])
    assert summary["noised"] and summary["cell_noise_variance"] == pytest.approx((z * COUNT_SENSITIVITY) ** 2)
    assert summary["overall"]["ece_noise_bound"] > 0


def test_the_report_page_shows_ece_per_group_and_a_reliability_diagram(trained):
    from server.report.calibration import calibration_report, calibration_section

    model, x, labels, groups = trained
    counts = _counts(model, x, labels, groups)
    metrics = MetricRecord(group_calibration_metrics(counts.group_calibration, DATASET))
    noised = MetricRecord(group_calibration_metrics(noised_calibration(counts.group_calibration, 1.0), DATASET))
    exact_round = {"round": 1, "calibration": calibration_summary([("0", metrics)], [])}
    noised_round = {"round": 2, "calibration": calibration_summary([("0", noised)], [1.0])}
    report = calibration_report([{"round": 0}, exact_round])
    html = calibration_section({"calibration": report})
    assert "calibration" in html and "<img" in html and "Noised" not in html
    assert f"{100 * ece_from_counts(counts.calibration):.1f} pp" in html
    assert "female" in html and "caucasian" in html
    report = calibration_report([exact_round, noised_round])
    html = calibration_section({"calibration": report})
    assert report["round"] == 2 and [h["round"] for h in report["history"]] == [1, 2]
    assert "Noised" in html and "&plusmn;" in html
    assert calibration_section({"calibration": None}) == ""


def test_a_paper_figure_of_the_reliability_diagram_is_written_with_the_others(trained, tmp_path):
    from server.report.calibration import calibration_report
    from server.report.figures import write_figures

    model, x, labels, groups = trained
    counts = _counts(model, x, labels, groups)
    metrics = MetricRecord(group_calibration_metrics(counts.group_calibration, DATASET))
    report = {"rounds": [], "calibration": calibration_report(
        [{"round": 0}, {"round": 1, "calibration": calibration_summary([("0", metrics)], [])}])}
    written = {p.name for p in write_figures(tmp_path, report)}
    assert {"calibration.svg", "calibration.png"} <= written
    (tmp_path / "none").mkdir()
    assert write_figures(tmp_path / "none", {"rounds": []})  # no calibration in the report: no diagram
    assert not (tmp_path / "none" / "figures" / "calibration.svg").exists()
