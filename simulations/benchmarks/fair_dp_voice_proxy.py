"""A fast stand-in for voice50_dp to compare fairness levers: one process, no Flower, exact per-group figures.

    python -m simulations.benchmarks.fair_dp_voice_proxy [--variant plain] [--epsilon 8] [--rounds 20]
        [--no-dp] [--lr 0.03] [--noise-seed 0] [--out FILE.jsonl]

The product's own data path (each node's partition and split of configs/voice50_dp.toml, the fixed log-mel
normalisation), voice_stats' per-clip statistics, then the face proxy's training loop (closed-form per-sample
gradients of the linear head, clipping, the node's own noise calibration, FedAvgM). A research proxy, not the
product (docs/fairness.md labels its rows).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simulations.benchmarks.fair_dp_proxy import record_groups, train_head, with_bias

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "voice50_dp.toml"
ATTRIBUTES = ("sex", "age")


def variants() -> dict[str, object]:
    """Variant name -> per-clip transform of the (B, 3 x mels) statistics: voice_stats ("plain"), voice_stats_norm
    ("norm", each block standardised across the bands) and the screened alternatives docs/fairness.md lists."""
    from shared_models.models.voice_stats_model import STATS_PER_BAND, standardise_blocks

    def unit(s: torch.Tensor) -> torch.Tensor:  # the whole vector at one norm
        return s / s.norm(dim=1, keepdim=True).clamp_min(1e-6) * s.shape[1] ** 0.5

    def whole(s: torch.Tensor) -> torch.Tensor:  # the whole vector at mean 0, std 1
        return (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-5)

    def norm_moments(s: torch.Tensor) -> torch.Tensor:  # norm, plus each block's mean and spread kept aside
        blocks = s.reshape(len(s), STATS_PER_BAND, -1)
        return torch.cat([standardise_blocks(s), blocks.mean(-1), blocks.std(-1)], 1)

    return {"plain": lambda s: s, "norm": standardise_blocks, "unit": unit, "whole": whole,
            "norm_moments": norm_moments}


def load(cache: Path, data_dir: str) -> tuple[list[dict], dict]:
    """Per node {"train": (stats, labels, groups), "test": ...}: voice_stats' statistics of every clip, cached."""
    path = cache / "voice50_dp-stats.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    from client.data.node_data import client_samples
    from shared_models.demographic_groups import group_schema
    from shared_models.models.registry import build_model
    from simulations.run_config import load_run_config

    config, settings = load_run_config(CONFIG, {"data-dir": data_dir})
    model = build_model("voice_stats")
    n_mels = model.n_mels
    mean = torch.full((n_mels,), settings.feature_fixed_mean)
    std = torch.full((n_mels,), settings.feature_fixed_std)
    schema = group_schema(settings.dataset)
    from client.privacy.group_counts import sample_groups
    from shared_models.models.voice_stats_model import clip_statistics

    nodes = []
    for pid in range(settings.num_supernodes):
        samples = client_samples(settings, {"partition-id": pid, "num-partitions": settings.num_supernodes},
                                 str(data_dir))
        node = {}
        for part in ("train", "test"):
            ds = getattr(samples, part)
            stats, labels = [], []
            for i in range(len(ds)):
                x, mask, label, _ = ds[i]
                z = (x[None] - mean.view(1, 1, -1, 1)) / std.view(1, 1, -1, 1)
                stats.append(clip_statistics(z, mask[None])[0])
                labels.append(int(label))
            codes = sample_groups(ds.data, settings.dataset)
            groups = {a: np.array([schema[a][c] for c in codes[a][0]]) for a in ATTRIBUTES}
            node[part] = (torch.stack(stats), torch.tensor(labels), groups)
        nodes.append(node)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save((nodes, {"n_mels": n_mels}), path)
    return nodes, {"n_mels": n_mels}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "data" / "cremad-synth"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "fedemo-fair-dp-proxy"))
    parser.add_argument("--variant", default="plain")
    parser.add_argument("--no-dp", action="store_true")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    nodes, _ = load(Path(args.cache), args.data)
    transform = variants()[args.variant]
    train = [(with_bias(transform(n["train"][0]).numpy()), n["train"][1], torch.ones(len(n["train"][1])))
             for n in nodes if len(n["train"][1])]
    x_test = with_bias(torch.cat([transform(n["test"][0]) for n in nodes]).numpy())
    y_test = torch.cat([n["test"][1] for n in nodes]).numpy()
    groups = {a: np.concatenate([n["test"][2][a] for n in nodes]) for a in ATTRIBUTES}
    gen = torch.Generator().manual_seed(2000 + 7919 * args.noise_seed)
    start = time.perf_counter()
    weights = train_head(train, x_test.shape[1], rounds=args.rounds, epsilon=None if args.no_dp else args.epsilon,
                         lr=args.lr, clip=args.clip, batch=args.batch, gen=gen)
    correct = (x_test @ weights.T).argmax(1).numpy() == y_test
    result = {"variant": args.variant, "dp": not args.no_dp, "epsilon": None if args.no_dp else args.epsilon,
              "rounds": args.rounds, "lr": args.lr, "clip": args.clip, "noise_seed": args.noise_seed,
              "accuracy": float(correct.mean()), "test_rows": int(len(y_test)),
              "wall_s": round(time.perf_counter() - start, 1)}
    return record_groups(result, correct, groups, args.out, digits=3)


if __name__ == "__main__":
    main()
