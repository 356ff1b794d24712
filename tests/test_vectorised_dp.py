"""Vectorised clients under DP-SGD (simulations/engine/vectorised_dp.py): each node's step as it alone would take it.

Several nodes with different data, weights and clipping norms, Poisson batches of different lengths (short, padded,
empty, a step where every batch is empty): the batched per-client per-sample clipping against the per-sample
brute force (tests/clipping_reference.py) and against the loop path (``train_epochs`` on each node's own
``make_private`` step); the noise from each node's own secret generator; a real simulation with vectorised clients
on and off spending the same on every node's ledger; the settings' refusal of models it cannot batch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from client.local_training import train_epochs
from client.privacy.secret_gaussian import SecretGaussian
from shared_models.config_error import ConfigError
from simulations.engine.vectorised_dp import CHUNK_ELEMENTS, PrivateClient, train_private_clients
from simulations.run_config import load_run_config
from simulations.simulate import run_simulation
from tests.clipping_reference import CPU, batches, clipped_sum, dataset, model, n_inputs, private

REPO = Path(__file__).resolve().parents[1]
# Per node: clipping norm (every sample clipped, some, none), Poisson batch sizes (a step where all are empty).
CLIPS = (0.05, 0.5, 1e4)
SIZES = ((5, 1, 0, 7), (3, 4, 0), (0, 2, 0, 0, 6))
MODELS = ["face_scatter", "voice_stats", pytest.param("face_cnn", marks=pytest.mark.slow)]


def _nodes(name: str, *, z: float, identical: bool = False, clips=CLIPS, frozen_bias: bool = False):
    """Three nodes' nets (different weights unless ``identical``), data and batches; two private steps each
    (vectorised, loop) on copies of the same net, their noise generators in equal states."""
    nodes = []
    for c in range(3):
        net = model(name)
        if not identical:
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.02 * c * torch.randn(p.shape, generator=torch.Generator().manual_seed(c)))
        if frozen_bias:
            net.head.bias.requires_grad_(False)
        data = dataset(name, 20, seed=1 if identical else c + 1, weighted=(c == 1 and not identical))
        steps = batches(data, SIZES[0] if identical else SIZES[c])
        clip = 0.5 if identical else clips[c]
        vec, loop = private(copy.deepcopy(net), data, z=z, clip=clip), private(copy.deepcopy(net), data, z=z, clip=clip)
        state = vec.optimizer.noise.generator.get_state()
        loop.optimizer.noise.generator.set_state(state)
        nodes.append((net, data, steps, clip, vec, loop))
    return nodes


def _run_loop(nodes, n_in: int) -> None:
    for _, _, steps, _, _, loop in nodes:
        train_epochs(loop.model, steps, loop.optimizer, epochs=1, n_inputs=n_in, device=CPU, private=loop)


def _run_vectorised(name: str, nodes, n_in: int):
    return train_private_clients(model(name), [PrivateClient(vec, steps) for _, _, steps, _, vec, _ in nodes],
                                 n_inputs=n_in, device=CPU)


def _brute_force(net, steps, n_in: int, clip: float, expected_batch_size: int):
    """Each step by hand: every sample's own gradient (autograd), clipped, summed, / expected batch size, SGD lr 1."""
    reference = copy.deepcopy(net)
    params = [p for p in reference.parameters() if p.requires_grad]
    norms = []
    for batch in steps:
        total, step_norms = clipped_sum(reference, batch, n_in, clip)
        norms += step_norms
        with torch.no_grad():
            for p, g in zip(params, total):
                p.sub_(g / expected_batch_size)
    return reference, norms


@pytest.mark.parametrize("name,frozen_bias", [("face_scatter", False), ("voice_stats", False), ("face_scatter", True),
                                               pytest.param("face_cnn", False, marks=pytest.mark.slow)])
def test_the_batched_clipped_update_equals_the_brute_force_and_the_loop(name, frozen_bias):
    n_in = n_inputs(name)
    nodes = _nodes(name, z=0.0, frozen_bias=frozen_bias)
    metrics = _run_vectorised(name, nodes, n_in)
    _run_loop(nodes, n_in)
    clipped = []
    for (net, _, steps, clip, vec, loop), got in zip(nodes, metrics):
        reference, norms = _brute_force(net, steps, n_in, clip, vec.optimizer.expected_batch_size)
        clipped += [norm > clip for norm in norms]
        start = dict(net.named_parameters())
        moved = max(float((p.detach() - start[k].detach()).abs().max()) for k, p in vec.module.named_parameters())
        assert moved > 1e-3  # it trained
        for (k, p), r, lp in zip(vec.module.named_parameters(), reference.parameters(), loop.module.parameters()):
            torch.testing.assert_close(p, r, atol=1e-5, rtol=1e-4, msg=k)  # the per-sample brute force
            torch.testing.assert_close(p, lp, atol=1e-5, rtol=1e-4, msg=k)  # the loop path
        assert vec.steps_taken() == loop.steps_taken() == len(steps)  # every step accounted, the empty ones too
        assert got["train-samples"] == sum(len(b[n_in]) for b in steps)
    assert any(clipped) and not all(clipped)  # both sides of the clipping factor are exercised


@pytest.mark.parametrize("name", ["face_scatter", "voice_stats"])
def test_both_clipping_engines_and_any_chunking_give_the_same_update(name, monkeypatch):
    """The ghost engine (a trained linear head), the per-sample engine with every node in one chunk, and with a
    memory bound small enough for one node per chunk: the same clipped updates."""
    n_in = n_inputs(name)
    ghost, per_sample, chunked = _nodes(name, z=0.0), _nodes(name, z=0.0), _nodes(name, z=0.0)
    _run_vectorised(name, ghost, n_in)
    monkeypatch.setattr("simulations.engine.vectorised_dp.ghost_layer", lambda template: None)
    _run_vectorised(name, per_sample, n_in)
    monkeypatch.setattr("simulations.engine.vectorised_dp.CHUNK_ELEMENTS", 1)
    assert CHUNK_ELEMENTS > 1
    _run_vectorised(name, chunked, n_in)
    for a, b, c in zip(ghost, per_sample, chunked):
        for p, q, r in zip(a[4].module.parameters(), b[4].module.parameters(), c[4].module.parameters()):
            torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5)  # float32 rounding
            torch.testing.assert_close(r, q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_each_nodes_noise_comes_from_its_own_generator(name):
    """Real noise (z = 1): with each node's generator in the loop's state, the same update and generator state
    afterwards (the same draws, in the same order); under fresh secret generators identical nodes differ."""
    n_in = n_inputs(name)
    nodes = _nodes(name, z=1.0, clips=(0.05, 0.5, 1.0))  # noise std z x C: a huge C amplifies float32 rounding
    _run_vectorised(name, nodes, n_in)
    _run_loop(nodes, n_in)
    for net, _, _, _, vec, loop in nodes:
        assert isinstance(vec.optimizer.noise.generator, SecretGaussian)  # the CPU's keystream, not torch's MT
        assert torch.equal(vec.optimizer.noise.generator.get_state(), loop.optimizer.noise.generator.get_state())
        for p, lp in zip(vec.module.parameters(), loop.module.parameters()):
            torch.testing.assert_close(p, lp, atol=1e-5, rtol=1e-4)

    twins = _nodes(name, z=1.0, identical=True)
    _run_vectorised(name, twins, n_in)
    updates = [torch.cat([p.detach().flatten() for p in t[4].module.parameters()]) for t in twins]
    assert not torch.allclose(updates[0], updates[1]) and not torch.allclose(updates[1], updates[2])
    noiseless = _nodes(name, z=0.0, identical=True)
    _run_vectorised(name, noiseless, n_in)
    same = [torch.cat([p.detach().flatten() for p in t[4].module.parameters()]) for t in noiseless]
    torch.testing.assert_close(same[0], same[1])  # without noise, identical nodes agree: the difference is noise


@pytest.mark.parametrize("overrides,why", [
    ({"model": "voice_crnn", "task": "voice", "dataset": "cremad"}, "not with dp = true for model 'voice_crnn'"),
    ({"model": "face_resnet"}, "not with dp = true for model 'face_resnet'"),
])
def test_models_the_batched_dp_step_cannot_clip_are_refused_at_start(overrides, why):
    with pytest.raises(ConfigError, match="vectorised-clients") as refused:
        load_run_config(REPO / "configs" / "quickstart_dp.toml", {"vectorised-clients": True, **overrides})
    assert why in str(refused.value) and "\n" not in str(refused.value)
    for name in ("face_scatter_lcn_blur", "voice_stats_norm", "face_cnn"):  # supported under dp
        task = {"task": "voice", "dataset": "cremad"} if name.startswith("voice") else {}
        load_run_config(REPO / "configs" / "quickstart_dp.toml", {"vectorised-clients": True, "model": name, **task})


def _ledger_events(run: Path) -> dict[str, list[dict]]:
    """Each node's ledger events without what differs between two runs by construction (time, run id, hashes)."""
    out = {}
    for ledger in sorted(run.glob("node-state/*/privacy_ledger.json")):
        events = json.loads(ledger.read_text())["events"]
        out[ledger.parent.name] = [{k: v for k, v in e.items() if k not in ("time", "run", "prev")} for e in events]
    return out


@pytest.mark.slow
def test_a_dp_simulation_with_vectorised_clients_spends_as_the_one_without(tmp_path):
    """Real runs on the local backend (face_scatter_lcn_blur, 3 nodes, 2 rounds): trained in vectorised groups,
    every node's ledger records the same spends (plan, steps, epsilon), the report and metrics are written."""
    def simulate(name: str, vectorised: bool) -> Path:
        config = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
                  "model": "face_scatter_lcn_blur", "synth-samples": 300, "num-supernodes": 3,
                  "min-available-nodes": 3, "num-server-rounds": 2, "simulation-backend": "local",
                  "simulation-workers": 1, "vectorised-clients": vectorised}
        return run_simulation(REPO / "configs" / "quickstart_dp.toml", config)

    off, on = simulate("off", False), simulate("on", True)
    engine = json.loads((on / "summary.json").read_text())["engine"]
    assert engine["vectorised_groups"] == [3, 3]
    ledgers_off, ledgers_on = _ledger_events(off), _ledger_events(on)
    assert len(ledgers_on) == 3 and ledgers_on == ledgers_off
    assert sum(e["kind"] == "train" for e in ledgers_on["client-0"]) == 2
    rounds_off, rounds_on = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                             for run in (off, on))
    for a, b in zip(rounds_off[1:], rounds_on[1:], strict=True):
        dp_a = {c["client"]: {k: v for k, v in c["dp"].items() if k != "ledger_head"} for c in a["train"]["clients"]}
        dp_b = {c["client"]: {k: v for k, v in c["dp"].items() if k != "ledger_head"} for c in b["train"]["clients"]}
        assert len(dp_a) == 3 and dp_a == dp_b
    assert (on / "report.json").is_file() and (on / "report.html").is_file()
