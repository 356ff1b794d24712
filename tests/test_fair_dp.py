"""DP without widening the gaps (issue 24): the face_scatter_lcn and voice_stats_norm front ends, their privacy
argument, the report and the benchmark.

The lever is a fixed per-sample transform (local contrast normalisation before the scattering transform), so
its privacy argument is that each sample's features depend on that sample alone and the DP step still bounds
each sample's contribution by the clipping norm (brute force, as the clipping tests do).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import clipping_reference as ref
from server.report.fair_dp_section import fair_dp_report
from shared_models.models.registry import build_model, model_task
from shared_models.models.scatter_models import (blur_lcn_scatter_features, lcn_scatter_features,
                                                 local_contrast_normalise, scatter_features)
from shared_models.models.voice_stats_model import clip_statistics, standardise_blocks

REPO = Path(__file__).resolve().parents[1]


def faces(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 48, 48, generator=g)


def test_lcn_features_of_a_face_depend_on_that_face_alone():
    """Replacing every other face in the batch leaves a face's features unchanged: per-sample sensitivity holds."""
    a, b, c = faces(1, 1), faces(3, 2), faces(3, 3)
    with_b = lcn_scatter_features(torch.cat([a, b]))[0]
    with_c = lcn_scatter_features(torch.cat([c, a]))[3]
    torch.testing.assert_close(with_b, with_c, atol=1e-5, rtol=1e-5)


def test_lcn_front_end_is_blind_to_exposure_and_contrast_where_plain_scattering_is_not():
    """An under-exposed, low-contrast copy (0.4 x + 0.1, as a dark face in a dim photo) gets the same features."""
    x = faces(4, 5)
    dim = 0.4 * x + 0.1
    torch.testing.assert_close(local_contrast_normalise(dim), local_contrast_normalise(x), atol=1e-4, rtol=1e-4)
    lcn_gap = (lcn_scatter_features(dim) - lcn_scatter_features(x)).abs().max().item()
    plain_gap = (scatter_features(dim) - scatter_features(x)).abs().max().item()
    assert lcn_gap < 1e-2 < plain_gap, (lcn_gap, plain_gap)


def test_a_flat_face_stays_finite():
    for front_end in (lcn_scatter_features, blur_lcn_scatter_features):
        assert torch.isfinite(front_end(torch.full((2, 1, 48, 48), 0.5))).all()


def test_blur_front_end_features_of_a_face_depend_on_that_face_alone():
    a, b, c = faces(1, 1), faces(3, 2), faces(3, 3)
    torch.testing.assert_close(blur_lcn_scatter_features(torch.cat([a, b]))[0],
                               blur_lcn_scatter_features(torch.cat([c, a]))[3], atol=1e-5, rtol=1e-5)


def test_blur_front_end_moves_less_under_pixel_noise_than_lcn_alone():
    """Pixel noise (std 0.01 on a smooth, low-contrast face) moves face_scatter_lcn_blur's features less than
    half as far as face_scatter_lcn's, relative to the clean face's: the low-pass raises the signal-to-noise ratio."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    clean = (0.35 + 0.15 * torch.sin(xx / 4) * torch.cos(yy / 5))[None, None].repeat(4, 1, 1, 1)
    noisy = clean + torch.randn(clean.shape, generator=g) * 0.01

    def moved(front_end) -> float:
        ref_features = front_end(clean)
        return float(((front_end(noisy) - ref_features).norm(dim=1) / ref_features.norm(dim=1)).mean())

    assert moved(blur_lcn_scatter_features) < 0.5 * moved(lcn_scatter_features)


@pytest.mark.parametrize("name,front_end", [("face_scatter_lcn", lcn_scatter_features),
                                            ("face_scatter_lcn_blur", blur_lcn_scatter_features)])
def test_the_fair_face_models_are_registered_face_models_with_the_face_scatter_head(name, front_end):
    model = build_model(name)
    assert model_task(name) == "face"
    plain = build_model("face_scatter")
    assert [p.shape for p in model.parameters()] == [p.shape for p in plain.parameters()]
    x = faces(3)
    torch.testing.assert_close(model(x), model.head(front_end(x)))


@pytest.mark.parametrize("name", ["face_scatter_lcn", "face_scatter_lcn_blur"])
def test_the_node_path_bounds_each_samples_contribution_by_the_clipping_norm_brute_force(name):
    """A node trains the fair face model's head on its precomputed features: its DP step equals the sum of each
    sample's own gradient clipped to C (plain autograd, no Opacus), on batches of 5, 1, 0 and 7 samples."""
    n = 13
    g = torch.Generator().manual_seed(7)
    net = ref.model(name)
    data = TensorDataset(net.fixed_features(faces(n, 11)), torch.randint(0, 7, (n,), generator=g),
                         torch.rand(n, 2, generator=g) * 2 - 1, torch.rand(n, generator=g) + 0.5)
    dp = ref.check_steps(net, data, ref.batches(data), 1)
    assert dp.clipping == "book-keeping"


def test_voice_stats_norm_features_of_a_clip_depend_on_that_clip_alone():
    """A clip's logits are the same in any batch, padded segments and all: per-sample sensitivity holds."""
    net = ref.model("voice_stats_norm").eval()
    data = ref.dataset("voice_stats_norm", 7, seed=3)
    x, mask = data.tensors[0], data.tensors[1]
    alone = torch.cat([net(x[i:i + 1], mask[i:i + 1]) for i in range(len(x))])
    together = net(x, mask)
    shuffled = net(x.flip(0), mask.flip(0)).flip(0)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, alone, atol=1e-5, rtol=1e-5)


def test_voice_stats_norm_is_blind_to_a_clips_level_and_gain_where_voice_stats_is_not():
    """A louder recording (+6 dB in every band) and a wider one (log-mel x 1.5 about its level) give
    voice_stats_norm the same features, each block at mean 0 and std 1 across the bands; voice_stats sees them."""
    data = ref.dataset("voice_stats_norm", 4, seed=5)
    x, mask = data.tensors[0], data.tensors[1]
    norm, plain = ref.model("voice_stats_norm").eval(), ref.model("voice_stats").eval()
    louder = x + 6.0
    wider = x * 1.5
    for other in (louder, wider):
        torch.testing.assert_close(norm(other, mask), norm(x, mask), atol=1e-4, rtol=1e-4)
        assert (plain(other, mask) - plain(x, mask)).abs().max() > 1e-2
    blocks = standardise_blocks(clip_statistics(x, mask)).reshape(4, 3, -1)
    torch.testing.assert_close(blocks.mean(-1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(blocks.std(-1, correction=0), torch.ones(4, 3), atol=1e-3, rtol=0)
    assert torch.isfinite(standardise_blocks(torch.zeros(2, 3 * 128))).all()  # a silent clip stays finite


def test_voice_stats_norm_is_a_registered_voice_model_with_the_voice_stats_head():
    model, plain = build_model("voice_stats_norm"), build_model("voice_stats")
    assert model_task("voice_stats_norm") == "voice"
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]
    assert set(model.state_dict()) == set(plain.state_dict())  # the coordinator's normalisation buffers too


def test_the_voice_node_path_bounds_each_clips_contribution_by_the_clipping_norm_brute_force():
    """voice_stats_norm's DP step (Opacus on the node's path) equals the sum of each clip's own gradient clipped
    to C (plain autograd), on batches of 5, 1, 0 and 7 clips, some with a leading padded segment."""
    data = ref.dataset("voice_stats_norm", 13, seed=9)
    ref.check_steps(ref.model("voice_stats_norm"), data, ref.batches(data), 2)


def test_the_benchmark_runs_plain_and_fair_models_of_both_dp_configs():
    """fair_dp's cells: no DP, and DP at each epsilon with and without the fair front end, for a config that
    names the plain model or the fair one; and face50_dp's non-DP lever without DP."""
    from simulations.benchmarks.fair_dp import cells

    for config, plain, fair in (("face50_dp", "face_scatter", "face_scatter_lcn_blur"),
                                ("voice50_dp", "voice_stats", "voice_stats_norm")):
        got = dict(cells(str(REPO / "configs" / f"{config}.toml"), [8.0, 3.0]))
        got_face = got if config == "face50_dp" else got_face
        for eps in (8, 3):
            assert got[f"{config}-eps{eps}-{plain}"] == {"dp": True, "dp-epsilon": eps, "model": plain}
            assert got[f"{config}-eps{eps}-{fair}"] == {"dp": True, "dp-epsilon": eps, "model": fair}
        assert got[f"{config}-nodp-{plain}"] == {"dp": False, "model": plain}
    assert got_face["face50_dp-nodp-face_scatter_lcn_blur"] == {"dp": False, "model": "face_scatter_lcn_blur"}


def test_reweight_power_one_balances_the_groups_and_a_higher_power_leans_on_the_rarest():
    """fairness-reweight-power: weights (n / (k n_group)) ** power at mean 1; power 1 gives each group the same
    total weight (scikit-learn's "balanced", as before), power 4 gives a sample of the group 6 times rarer 6**4
    times the weight."""
    import numpy as np

    from client.data.fairness_weights import inverse_frequency_weights

    groups = np.array(["a"] * 6 + ["b"] * 3 + ["c"] * 1)
    for power in (1.0, 4.0):
        w = inverse_frequency_weights(groups, power)
        assert w.dtype == np.float32 and abs(w.mean() - 1) < 1e-6
        assert np.allclose(w[9] / w[0], 6.0 ** power, rtol=1e-5) and np.allclose(w[6] / w[0], 2.0 ** power, rtol=1e-5)
    balanced = inverse_frequency_weights(groups, 1.0)
    assert np.allclose([balanced[groups == g].sum() for g in "abc"], 10 / 3, rtol=1e-5)


@pytest.mark.parametrize("overrides,problem", [
    ({"fairness-reweight": "race", "fairness-reweight-power": 0.5}, "between 1"),
    ({"fairness-reweight": "race", "fairness-reweight-power": 9.0}, "between 1"),
    ({"fairness-reweight-power": 4.0}, "set fairness-reweight too"),
    ({"fairness-reweight": "race", "fairness-reweight-power": 4.0, "dp": True}, "fairness-reweight"),
])
def test_reweight_power_out_of_range_alone_or_under_dp_is_refused_in_one_line(overrides, problem):
    from shared_models.config_error import ConfigError
    from simulations.run_config import load_run_config

    with pytest.raises(ConfigError, match=problem):
        load_run_config(None, overrides)
    _, ok = load_run_config(None, {"fairness-reweight": "race", "fairness-reweight-power": 4.0})
    assert ok.fairness_reweight_power == 4.0


def test_the_report_names_the_method_and_its_privacy_cost():
    lcn = fair_dp_report({"model": "face_scatter_lcn", "dp": True, "fairness-reweight": ""})
    assert lcn["method"] == "face_scatter_lcn" and lcn["extra_epsilon"] == 0.0 and lcn["extra_statistics"] == []
    voice = fair_dp_report({"model": "voice_stats_norm", "dp": True, "fairness-reweight": ""})
    assert voice["method"] == "voice_stats_norm" and voice["extra_epsilon"] == 0.0 and voice["extra_statistics"] == []
    plain = fair_dp_report({"model": "face_scatter", "dp": True, "fairness-reweight": ""})
    assert plain["method"] == "none"
    reweighted = fair_dp_report({"model": "face_cnn", "dp": False, "fairness-reweight": "race"})
    assert reweighted["method"] == "fairness-reweight=race" and reweighted["extra_epsilon"] is None
    sharper = fair_dp_report({"model": "face_scatter_lcn", "dp": False, "fairness-reweight": "race",
                              "fairness-reweight-power": 4.0})
    assert sharper["method"] == "face_scatter_lcn + fairness-reweight=race, power 4"
    assert sharper["extra_epsilon"] is None and "local contrast" in sharper["description"]
    powered = fair_dp_report({"model": "face_scatter", "dp": False, "fairness-reweight": "race",
                              "fairness-reweight-power": 4.0})
    assert powered["method"] == "fairness-reweight=race, power 4" and "power 4" in powered["description"]


def test_compare_labels_the_front_end_and_the_reweighting_of_a_non_dp_run():
    """fedemo compare's run label names both levers of a non-DP run that uses the LCN front end with
    fairness-reweight at power 4 (no extra epsilon to print: nothing is claimed without DP)."""
    from server.report.compare import _label

    config = {"model": "face_scatter_lcn", "dp": False, "fairness-reweight": "race", "fairness-reweight-power": 4.0}
    label = _label({"run": {"run_id": "r"}, "config": config, "privacy": {}, "fair_dp": fair_dp_report(config)})
    assert "reweighted by race (power 4)" in label and "fairness method face_scatter_lcn + " in label
    assert "extra epsilon" not in label
    dp = {"model": "voice_stats_norm", "dp": True, "fairness-reweight": ""}
    assert "fairness method voice_stats_norm (extra epsilon 0)" in _label(
        {"run": {"run_id": "v"}, "config": dp, "privacy": {"sample_level_dp": True}, "fair_dp": fair_dp_report(dp)})


@pytest.mark.slow
def test_a_dp_run_with_the_fair_front_end_reports_it_and_the_benchmark_tabulates_it(tmp_path):
    """A real Flower run (2 nodes, 1 round) of face_scatter_lcn under DP: the signed report names the method at
    extra epsilon 0, and the benchmark's row has exact accuracy, each attribute's gap with its interval and
    the training epsilon within the budget."""
    from simulations.benchmarks.fair_dp import markdown, run_row
    from simulations.simulate import run_simulation

    config = {"data-dir": str(tmp_path / "data"), "runs-dir": str(tmp_path / "runs"), "run-name": "lcn",
              "synth-samples": 600, "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1,
              "model": "face_scatter_lcn", "partitioner": "iid"}
    run_dir = Path(run_simulation(REPO / "configs" / "quickstart_dp.toml", config))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["fair_dp"]["method"] == "face_scatter_lcn" and report["fair_dp"]["extra_epsilon"] == 0.0
    assert "Fairness method and its privacy cost" in (run_dir / "report.html").read_text()
    row = run_row(run_dir)
    assert row["model"] == "face_scatter_lcn" and 0.0 <= row["accuracy"] <= 1.0 and row["test_rows"] > 0
    assert 0 < row["training_epsilon"] <= 8.0
    assert set(row["attributes"]) >= {"sex"}
    item = row["attributes"]["sex"]
    assert item["gap_ci"][0] <= item["gap"] <= item["gap_ci"][1]
    assert "face_scatter_lcn" in markdown([row])


@pytest.mark.slow
def test_a_voice_dp_run_with_voice_stats_norm_reports_it_and_stays_within_its_budget(tmp_path):
    """voice50_dp's recipe (now voice_stats_norm) as a real Flower run, 2 nodes and 1 round: the signed report
    names the method at extra epsilon 0, and the benchmark's row scores it with a training epsilon within 8."""
    from simulations.benchmarks.fair_dp import run_row
    from simulations.simulate import run_simulation

    config = {"data-dir": str(tmp_path / "data"), "runs-dir": str(tmp_path / "runs"), "run-name": "norm",
              "synth-samples": 120, "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1,
              "partitioner": "iid"}
    run_dir = Path(run_simulation(REPO / "configs" / "voice50_dp.toml", config))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["fair_dp"]["method"] == "voice_stats_norm" and report["fair_dp"]["extra_epsilon"] == 0.0
    row = run_row(run_dir)
    assert row["model"] == "voice_stats_norm" and row["test_rows"] > 0 and 0 < row["training_epsilon"] <= 8.0
