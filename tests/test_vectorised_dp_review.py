"""An adversarial review of vectorised DP-SGD (simulations/engine/vectorised_dp.py, client_groups.py): tests that try
to break its privacy and exactness on the real code paths (real Opacus steps from ``make_private``).

Checked: every random draw from secret entropy (Poisson masks and noise, not the run's seed); each node's noise
from its own generator with std noise_multiplier x its own clipping norm, scaled by its own expected batch size;
each node's accountant counting exactly its own steps (empty Poisson batches, fewer batches, its own sample rate);
replace-one sensitivity (one node's clipped sum moves by at most 2C, no other node's sum moves, whatever the
replaced sample is); a group of trainings split by model, each member keeping its own plan.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from client.privacy.private_step import HOOKS
from client.privacy.secret_gaussian import SecretGaussian
from client.local_training import train_epochs
from simulations.engine.client_groups import _Slot, train_together
from simulations.engine.vectorised_dp import PrivateClient, private_batches, train_private_clients
from simulations.run_config import load_run_config
from tests.clipping_reference import CPU, batches, dataset, model, n_inputs, private
from tests.test_vectorised_dp import REPO

# ghost engine (a trained linear head) and torch.func per-sample engine (face_cnn: padding, vmap over nodes)
ENGINES = ["face_scatter", "voice_stats", "face_cnn"]


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters() if p.requires_grad])


def _clipped_sums(name: str, datas, sizes, clips, net=None):
    """Each node's clipped sum of its one step (z = 0, SGD lr 1: the update x expected batch size)."""
    net = net if net is not None else model(name)
    steps = [private(copy.deepcopy(net), d, z=0.0, clip=c) for d, c in zip(datas, clips)]
    before = [_flat(s.module) for s in steps]
    train_private_clients(model(name), [PrivateClient(s, batches(d, (k,))) for s, d, k in zip(steps, datas, sizes)],
                          n_inputs=n_inputs(name), device=CPU)
    return [(b - _flat(s.module)) * s.optimizer.expected_batch_size for b, s in zip(before, steps)]


def _replace(data: TensorDataset, i: int, *, x=None, label=None) -> TensorDataset:
    """``data`` with sample i's first input mapped by ``x`` and/or its label set (labels: the first int64 field)."""
    fields = [t.clone() for t in data.tensors]
    if x is not None:
        fields[0][i] = x(fields[0][i])
    if label is not None:
        labels = next(t for t in fields if t.dtype == torch.int64)
        labels[i] = label if labels[i] != label else label - 1
    return TensorDataset(*fields)


ADVERSARIES = {
    "huge-input": dict(x=lambda t: t * 1e4 + 1e3),
    "other-label": dict(label=6),
    "zero-input": dict(x=lambda t: torch.zeros_like(t)),
}


SLOW_FRONT_ENDS = [pytest.param(name, "huge-input", marks=pytest.mark.slow)  # the scattering runs on raw faces
                   for name in ("face_scatter_lcn", "face_scatter_lcn_blur")]


@pytest.mark.parametrize("name,adversary", [(name, adversary) for name in (*ENGINES, "voice_stats_norm")
                                            for adversary in ADVERSARIES] + SLOW_FRONT_ENDS)
def test_replacing_one_sample_moves_its_nodes_clipped_sum_by_at_most_2C_and_no_other_nodes(name, adversary):
    """Replace-one on node 1 (its sample 0, in its one batch): its clipped sum moves by <= 2 C_1, and the other
    nodes' sums (smaller and larger batches, other clipping norms) do not move at all. Every model the batched DP
    step accepts (shared_models/settings/simulation.py VECTORISABLE_DP_MODELS): a front end that tied samples
    together would move the other samples' terms too."""
    clips, sizes = (0.3, 0.05, 2.0), (2, 4, 6)
    datas = [dataset(name, 12, seed=s) for s in (1, 2, 3)]
    clean = _clipped_sums(name, datas, sizes, clips)
    adjacent = _clipped_sums(name, [datas[0], _replace(datas[1], 0, **ADVERSARIES[adversary]), datas[2]], sizes,
                             clips)
    moved = float((clean[1] - adjacent[1]).double().norm())
    assert 0 < moved <= 2 * clips[1] * (1 + 1e-4)
    for k in (0, 2):
        assert torch.equal(clean[k], adjacent[k]), k  # no cross-talk through the stacked/concatenated batch


@pytest.mark.parametrize("name", ["face_scatter", "face_cnn"])
def test_each_sample_is_clipped_to_its_own_nodes_norm(name):
    """One sample per node, clipping norms a factor 1000 apart in one group: each node's clipped sum has norm
    exactly min(its own C, the gradient's norm) (no node's factor uses another node's C)."""
    clips = (1e-3, 1.0, 1e-3)
    datas = [dataset(name, 4, seed=s) for s in (1, 2, 3)]
    sums = _clipped_sums(name, datas, (1, 1, 1), clips)
    for s, c in zip(sums, clips):
        assert float(s.double().norm()) == pytest.approx(c, rel=1e-3)


NON_FINITE = {"nan-input": lambda t: torch.full_like(t, float("nan")), "overflowing-input": lambda t: t * 1e30 + 1e30}


@pytest.mark.parametrize("poison", list(NON_FINITE))
@pytest.mark.parametrize("name", ["face_scatter", "face_cnn"])  # face_cnn: padding rows are zeroed, not weighted
def test_a_node_with_an_empty_batch_is_untouched_by_another_nodes_non_finite_sample(name, poison):
    """Node 0's sample gives a non-finite gradient (face_cnn: its own update is then NaN, as in the loop path);
    node 1's Poisson batch at that step is empty: without noise its model must not move at all, as alone."""
    datas = [dataset(name, 8, seed=1), dataset(name, 8, seed=2)]
    datas[0] = _replace(datas[0], 0, x=NON_FINITE[poison])
    net = model(name)
    steps = [private(copy.deepcopy(net), d, z=0.0, clip=1.0) for d in datas]
    train_private_clients(model(name), [PrivateClient(steps[0], batches(datas[0], (3,))),
                                        PrivateClient(steps[1], batches(datas[1], (0,)))],
                          n_inputs=n_inputs(name), device=CPU)
    assert torch.equal(_flat(steps[1].module), _flat(net)), "an empty node's step moved by another node's sample"


def _loop_clipped_sum(name: str, data, size: int, clip: float, clipping: str | None = None) -> torch.Tensor:
    """The loop path's clipped sum of one step (``train_epochs`` on the node's own private step, z = 0, lr 1)."""
    step = private(model(name), data, z=0.0, clip=clip, clipping=clipping)
    before = _flat(step.module)
    train_epochs(step.model, batches(data, (size,)), step.optimizer, epochs=1, n_inputs=n_inputs(name), device=CPU,
                 private=step)
    return (before - _flat(step.module)) * step.optimizer.expected_batch_size


@pytest.mark.parametrize("path", ["vectorised", "loop", "loop-hooks"])
@pytest.mark.parametrize("name,poison", [
    ("face_scatter", "nan-input"),
    ("face_cnn", "nan-input"),
    ("face_scatter", "overflowing-input"),  # the ghost factor is 0 and the finite input row stays finite
    ("face_cnn", "overflowing-input"),
    ("voice_stats", "overflowing-input"),
])
def test_a_non_finite_sample_moves_its_nodes_clipped_sum_by_at_most_2C(name, poison, path):
    """Replace-one with a sample whose gradient is not finite: the clipped sum must still move by <= 2C. It was
    NaN in both paths (0 x NaN in the clipped sum): the released model revealed the sample; now such a sample's
    gradient counts as zero."""
    clip, data = 0.5, dataset(name, 8, seed=1)
    poisoned = _replace(data, 0, x=NON_FINITE[poison])
    if path.startswith("loop"):
        clipping = HOOKS if path == "loop-hooks" else None  # Opacus's hooks, or book-keeping
        clean, adjacent = (_loop_clipped_sum(name, d, 3, clip, clipping) for d in (data, poisoned))
        assert torch.isfinite(adjacent).all()
    else:
        clean, adjacent = (_clipped_sums(name, [d], (3,), (clip,))[0] for d in (data, poisoned))
    assert float((clean - adjacent).double().norm()) <= 2 * clip * (1 + 1e-4)


def _twin(gen: SecretGaussian) -> SecretGaussian:
    copy_ = SecretGaussian()
    copy_.set_state(gen.get_state())
    return copy_


def test_each_nodes_noise_has_std_z_times_its_own_clip_over_its_own_expected_batch_size():
    """Noise-only steps (empty Poisson batches) of three nodes in one group with different noise multipliers,
    clipping norms, expected batch sizes and step counts: each node's update is exactly minus its own draws
    N(0, (z_i C_i / B_i)^2) from its own generator, step after step (SGD lr 1)."""
    name, data = "face_scatter", dataset("face_scatter", 16, seed=1)
    plans = ((0.5, 0.1, 2, 3), (1.0, 1.0, 4, 1), (2.0, 3.0, 8, 2))  # z, C, batch size, steps
    net = model(name)
    steps = [private(copy.deepcopy(net), data, z=z, clip=c, batch_size=b) for z, c, b, _ in plans]
    assert [s.optimizer.expected_batch_size for s in steps] == [2, 4, 8]
    gens = [s.optimizer.noise.generator for s in steps]
    assert len({id(g) for g in gens}) == 3 and all(isinstance(g, SecretGaussian) for g in gens)
    assert len({bytes(g.get_state().tolist()) for g in gens}) == 3  # each keyed from the OS on its own
    expected = []
    for (z, c, b, n), s, g in zip(plans, steps, gens):
        twin, start = _twin(g), _flat(s.module)
        for _ in range(n):
            start = start - twin.normal_(torch.empty(start.numel()), z * c / b)
        expected.append(start)
    empty = batches(data, (0,))[0]
    train_private_clients(model(name), [PrivateClient(s, [empty] * n) for s, (*_, n) in zip(steps, plans)],
                          n_inputs=1, device=CPU)
    for (z, c, b, n), s, want in zip(plans, steps, expected):
        got = _flat(s.module)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        noise = (_flat(net) - got) * b / (z * c * n ** 0.5)  # the summed draws, in units of their std
        assert 0.97 < float(noise.std()) < 1.03 and abs(float(noise.mean())) < 0.03
        assert s.steps_taken() == n  # each noise-only step accounted


def test_masks_and_noise_do_not_follow_the_run_seed():
    """The coordinator knows the run's seed: with torch's global generator seeded alike, two builds of one node's
    private step draw different Poisson batches (as the group takes them, ``private_batches``) and noise."""
    data = dataset("face_scatter", 64, seed=1)
    drawn = []
    for _ in range(2):
        torch.manual_seed(1234)
        step = private(model("face_scatter"), data, z=1.0, clip=1.0, batch_size=8)
        taken = private_batches(step.loader, 1)
        drawn.append((torch.cat([b[1] for b in taken]), [len(b[1]) for b in taken],
                      step.optimizer.noise.draw()))
    assert len(drawn[0][1]) == len(drawn[1][1]) == 8  # one batch per 1/q, empty ones too
    assert drawn[0][1] != drawn[1][1] or not torch.equal(drawn[0][0], drawn[1][0])
    assert not torch.equal(drawn[0][2], drawn[1][2])


def test_each_nodes_accountant_counts_exactly_its_own_steps_at_its_own_rate():
    """Three nodes in one group with their own sample rates and noise multipliers and real Poisson batches over two
    epochs (different numbers of steps), and a fourth whose every batch is empty: each accountant holds exactly
    its node's steps, at its own (z, q)."""
    name, data = "face_scatter", dataset("face_scatter", 16, seed=2)
    net = model(name)
    plans = ((0.7, 2), (1.1, 4), (1.9, 8), (1.3, 4))  # z, batch size (q = batch size / 16)
    steps = [private(copy.deepcopy(net), data, z=z, clip=1.0, batch_size=b) for z, b in plans]
    taken = [private_batches(s.loader, 2) for s in steps[:3]] + [batches(data, (0, 0, 0))]
    assert [len(t) for t in taken] == [16, 8, 4, 3]
    train_private_clients(model(name), [PrivateClient(s, t) for s, t in zip(steps, taken)], n_inputs=1, device=CPU)
    for (z, b), s, t in zip(plans, steps, taken):
        assert s.steps_taken() == len(t)
        assert {(sigma, q) for sigma, q, _ in s.engine.accountant.history} == {(z, b / 16)}


def _settings(**overrides):
    return load_run_config(REPO / "configs" / "quickstart_dp.toml", {"vectorised-clients": True, **overrides})[1]


def _dp_slot(settings, name, data, *, z, clip, sizes, batch_size=4):
    """A node's prepared private training as the ClientApp hands it in, and a loop twin (noise in the same state)."""
    from client.client_app import LocalTraining

    net = model(name)
    vec, loop = (private(copy.deepcopy(net), data, z=z, clip=clip, batch_size=batch_size) for _ in range(2))
    loop.optimizer.noise.generator.set_state(vec.optimizer.noise.generator.get_state())
    training = LocalTraining(settings, vec.model, vec.loader, vec.optimizer, n_inputs(name), CPU, private=vec)
    return _Slot(training, batches(data, sizes)), loop


def _plain_slot():
    """A non-DP face_scatter node's prepared training (quickstart.toml: Adam, 3 epochs) and its twin trained alone."""
    from client.client_app import LocalTraining
    from client.local_training import make_optimizer
    from simulations.engine.vectorised_clients import epoch_batches

    settings = load_run_config(REPO / "configs" / "quickstart.toml", {"vectorised-clients": True,
                                                                      "model": "face_scatter"})[1]
    net, data = model("face_scatter"), dataset("face_scatter", 10, seed=4)
    twin = copy.deepcopy(net)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    training = LocalTraining(settings, net, loader, make_optimizer(net, settings), 1, CPU)
    train_epochs(twin, loader, make_optimizer(twin, settings), epochs=settings.local_epochs, n_inputs=1, device=CPU)
    return _Slot(training, epoch_batches(loader, settings.local_epochs)), twin


def test_a_group_with_two_models_and_different_plans_trains_each_node_as_alone():
    """One worker's group: two face_scatter nodes with different noise, clipping norms and batch sizes, a
    voice_stats node (another model: another vectorised group) and a non-DP face_scatter node; each node's update
    equals its loop twin's, noise included, and no member fails."""
    face, voice = _settings(), _settings(model="voice_stats", task="voice", dataset="cremad")
    members = [
        _dp_slot(face, "face_scatter", dataset("face_scatter", 16, seed=1), z=1.0, clip=0.05, sizes=(3, 0, 5)),
        _dp_slot(voice, "voice_stats", dataset("voice_stats", 16, seed=2), z=0.5, clip=0.5, sizes=(2, 6)),
        _dp_slot(face, "face_scatter", dataset("face_scatter", 16, seed=3), z=2.0, clip=1.0, sizes=(4,),
                 batch_size=8),
    ]
    plain, plain_twin = _plain_slot()
    train_together([slot for slot, _ in members] + [plain])
    assert plain.error is None  # a non-DP node of the same model: its own (non-DP) group, trained as alone
    torch.testing.assert_close(_flat(plain.training.model), _flat(plain_twin), atol=1e-5, rtol=1e-4)
    for slot, loop in members:
        assert slot.error is None and slot.metrics is not None
        train_epochs(loop.model, slot.batches, loop.optimizer, epochs=1, n_inputs=slot.training.n_inputs,
                     device=CPU, private=loop)
        torch.testing.assert_close(_flat(slot.training.private.module), _flat(loop.module), atol=1e-5, rtol=1e-4)
        assert slot.training.private.steps_taken() == loop.steps_taken() == len(slot.batches)


def test_one_nodes_bad_label_fails_only_that_node():
    face = _settings()
    bad = dataset("face_scatter", 8, seed=1)
    bad = _replace(bad, 0, label=99)
    members = [_dp_slot(face, "face_scatter", bad, z=0.0, clip=1.0, sizes=(3,)),
               _dp_slot(face, "face_scatter", dataset("face_scatter", 8, seed=2), z=0.0, clip=1.0, sizes=(3,))]
    train_together([slot for slot, _ in members])
    assert members[0][0].error is not None  # as alone: its own training fails
    assert members[1][0].error is None, f"a healthy node failed on another node's data: {members[1][0].error}"


def test_a_private_step_the_batched_step_cannot_take_is_refused_before_any_step():
    """Opacus's hooks optimizer clips its own per-sample gradients: handed a sum it would not clip, so the batched
    step refuses it, before any node steps (no node's accountant counts a step)."""
    data = dataset("face_scatter", 8, seed=1)
    ok, hooks = (private(model("face_scatter"), data, z=1.0, clip=1.0, clipping=c) for c in ("book-keeping", "hooks"))
    with pytest.raises(ValueError, match="not book-keeping's"):
        train_private_clients(model("face_scatter"), [PrivateClient(ok, batches(data, (2,))),
                                                      PrivateClient(hooks, batches(data, (2,)))],
                              n_inputs=1, device=CPU)
    assert ok.steps_taken() == hooks.steps_taken() == 0


def test_every_model_the_batched_dp_step_accepts_is_in_the_replace_one_test():
    from shared_models.settings.simulation import VECTORISABLE_DP_MODELS

    covered = {*ENGINES, "voice_stats_norm", "face_scatter_lcn", "face_scatter_lcn_blur"}
    assert set(VECTORISABLE_DP_MODELS) <= covered, set(VECTORISABLE_DP_MODELS) - covered


@pytest.mark.slow
def test_what_a_dp_node_sends_is_the_same_with_and_without_vectorised_clients(tmp_path):
    """Real runs (local backend, one worker: the three nodes in one group; several Poisson steps each, the nodes'
    noise multipliers differing): every value each node's train reply carries into the run's record (consent
    counts, sample count, DP figures) equals the loop's, the model's ledger hash aside; no train loss or other
    unaccounted value appears."""
    import json

    from simulations.simulate import run_simulation

    def clients(name: str, vectorised: bool) -> list[dict]:
        config = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
                  "model": "face_scatter", "synth-samples": 200, "num-supernodes": 3, "batch-size": 16,
                  "min-available-nodes": 3, "num-server-rounds": 1, "simulation-backend": "local",
                  "simulation-workers": 1, "vectorised-clients": vectorised}
        run = run_simulation(REPO / "configs" / "quickstart_dp.toml", config)
        if vectorised:
            assert json.loads((run / "summary.json").read_text())["engine"]["vectorised_groups"] == [3]
        rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert not rounds[1]["train"]["failures"]
        entries = sorted(rounds[1]["train"]["clients"], key=lambda c: c["client"])
        for entry in entries:
            entry["dp"].pop("ledger_head")
        return entries

    off, on = clients("off", False), clients("on", True)
    assert len(on) == 3 and on == off
    assert all(entry["dp"]["steps"] > 1 for entry in on)
    assert all(set(entry) == {"client", "consent", "dp", "num_examples"} for entry in on)


@pytest.mark.parametrize("name", ["voice_stats", "voice_stats_norm"])
def test_each_node_runs_its_own_buffers_not_the_templates(name):
    """The nodes' fixed front ends hold buffers the coordinator sends (the audio normalisation): two nodes with
    different buffers, neither the template's defaults; each batched update equals its loop twin's."""
    n_in, twins = n_inputs(name), []
    for c in (1, 2):
        net = model(name)
        with torch.no_grad():
            net.feature_mean.copy_(torch.randn(net.feature_mean.shape, generator=torch.Generator().manual_seed(c)))
            net.feature_std.uniform_(0.2 * c, 2.0 * c)
        data = dataset(name, 12, seed=c)
        vec, loop = (private(copy.deepcopy(net), data, z=0.0, clip=0.5) for _ in range(2))
        twins.append((vec, loop, batches(data, (3, 5))))
    train_private_clients(model(name), [PrivateClient(vec, steps) for vec, _, steps in twins], n_inputs=n_in,
                          device=CPU)
    for vec, loop, steps in twins:
        train_epochs(loop.model, steps, loop.optimizer, epochs=1, n_inputs=n_in, device=CPU, private=loop)
        torch.testing.assert_close(_flat(vec.module), _flat(loop.module), atol=1e-6, rtol=1e-5)
        assert not torch.equal(_flat(vec.module), _flat(model(name)))


@pytest.mark.slow  # about 10 s: six face_cnn group steps
def test_chunking_over_nodes_neither_changes_nor_mixes_clipped_sums(monkeypatch):
    """face_cnn's per-sample engine with a memory bound that splits the group into chunks (two nodes, then one
    per chunk): every node's clipped sum equals the unchunked one, and a replaced sample of node 1 moves only node
    1's sum, by <= 2C."""
    from simulations.engine import vectorised_dp

    name, clips, sizes = "face_cnn", (0.3, 0.05, 2.0), (2, 4, 6)
    datas = [dataset(name, 12, seed=s) for s in (1, 2, 3)]
    adjacent_datas = [datas[0], _replace(datas[1], 0, **ADVERSARIES["huge-input"]), datas[2]]
    whole = _clipped_sums(name, datas, sizes, clips)
    per_row = sum(p.numel() for p in model(name).parameters())
    for bound in (2 * 6 * per_row, 1):  # two nodes per chunk (6 rows each at most), then one
        monkeypatch.setattr(vectorised_dp, "CHUNK_ELEMENTS", bound)
        chunked, adjacent = _clipped_sums(name, datas, sizes, clips), _clipped_sums(name, adjacent_datas, sizes, clips)
        for a, b in zip(whole, chunked):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
        assert torch.equal(chunked[0], adjacent[0]) and torch.equal(chunked[2], adjacent[2])
        assert 0 < float((chunked[1] - adjacent[1]).double().norm()) <= 2 * clips[1] * (1 + 1e-4)
