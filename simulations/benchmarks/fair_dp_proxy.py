"""A fast stand-in for face50_dp to compare fairness levers: one process, no Flower, exact per-group figures.

    python -m simulations.benchmarks.fair_dp_proxy [--model face_scatter_lcn] [--epsilon 8] [--rounds 8]
        [--no-dp] [--lr 0.03] [--clip 1] [--prior-weights race] [--noise-seed 0] [--out FILE.jsonl]

Same data and split as face50_dp, closed-form per-sample gradients of the linear head, clipping, the node's
own noise calibration and FedAvgM: a lever is screened in seconds before the product benchmark. A research
proxy, not the product (docs/fairness.md labels its rows). Details: docs/design_notes.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
PRIORS = {  # the synthetic population's published shares (simulations/synthetic/synth_faces.py Population)
    "race": {"caucasian": 0.6, "african_american": 0.15, "asian": 0.25},
}
NODES, TEST_FRACTION, BATCH, SERVER_MOMENTUM = 50, 0.2, 64, 0.9


def blurred(faces: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each face low-passed by a Gaussian of ``sigma`` pixels (a per-face denoiser screened as a front end)."""
    half = max(1, int(3 * sigma))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    return torch.nn.functional.conv2d(torch.nn.functional.pad(faces, (half,) * 4, mode="reflect"), k[None, None])


def load(data_dir: Path, model: str, cache: Path, blur: float = 0.0) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                                               np.ndarray]:
    """(labels, {attribute: groups}, features) of the FER2013-layout folder, features cached per model (and blur)."""
    from shared_models.models.registry import build_model

    rows = list(csv.reader(open(data_dir / "fer2013.csv", encoding="utf-8")))[1:]
    labels = np.array([int(r[0]) for r in rows])
    demo = list(csv.DictReader(open(data_dir / "fer2013_demographics.csv", encoding="utf-8")))
    groups = {a: np.array([d[a] for d in demo]) for a in ("race", "age", "sex")}
    path = cache / (f"{data_dir.name}-{model}" + (f"-blur{blur:g}" if blur else "") + ".npy")
    if not path.exists():
        pixels = np.stack([np.array(r[1].split(), dtype=np.uint8) for r in rows]).reshape(-1, 1, 48, 48)
        features = build_model(model).fixed_features
        front = (lambda x: features(blurred(x, blur))) if blur else features
        out = [front(torch.from_numpy(pixels[s:s + 1000]).float() / 255).half().numpy()
               for s in range(0, len(pixels), 1000)]
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, np.concatenate(out))
    return labels, groups, np.load(path, mmap_mode="r")


def split(labels: np.ndarray, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(NODES)]
    for c in range(7):
        idx = rng.permutation(np.where(labels == c)[0])
        cut = (np.cumsum(rng.dirichlet(np.ones(NODES))) * len(idx)).astype(int)[:-1]
        for k, s in enumerate(np.split(idx, cut)):
            parts[k] += list(s)
    train, test = [], []
    for p in parts:
        p = rng.permutation(p)
        n_test = int(round(TEST_FRACTION * len(p)))
        test.append(p[:n_test])
        train.append(np.sort(p[n_test:]))
    return train, np.sort(np.concatenate(test))


def prior_weights(groups: np.ndarray, prior: dict[str, float]) -> np.ndarray:
    """Per sample min share / its group's share (at most 1; a group outside the prior gets 1)."""
    low = min(prior.values())
    return np.array([low / prior[g] if g in prior else 1.0 for g in groups])


def with_bias(x: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return torch.cat([x, torch.ones(len(x), 1)], 1)


def train_head(nodes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], dim: int, *, rounds: int,
               epsilon: float | None, lr: float, clip: float, batch: int, gen: torch.Generator,
               classes: int = 7) -> torch.Tensor:
    """FedAvgM (every node every round, one local epoch) of a linear head on fixed features; DP-SGD at
    ``epsilon`` (Poisson sampling, per-sample clipping in closed form, the node's own noise calibration) or none."""
    from client.privacy.dp_training import calibrate_noise

    weights = torch.zeros(classes, dim)
    momentum = torch.zeros_like(weights)
    for _ in range(rounds):
        deltas, sizes = [], []
        for x, y, w in nodes:
            n = len(x)
            q, steps = min(1.0, batch / n), max(1, round(n / batch))
            z = 0.0 if epsilon is None else calibrate_noise([], q, steps * rounds, target_epsilon=epsilon,
                                                            delta=1 / (10 * n))
            local = weights.clone()
            for s in range(steps):
                pick = (torch.rand(n, generator=gen) < q) if epsilon is not None else \
                    torch.randperm(n, generator=gen)[s * batch:(s + 1) * batch]
                xb, yb, wb = x[pick], y[pick], w[pick]
                err = torch.softmax(xb @ local.T, 1)
                err[torch.arange(len(yb)), yb] -= 1
                if epsilon is None:
                    grad = (err * wb[:, None]).T @ xb / max(1, len(yb))
                else:
                    norms = err.norm(dim=1) * xb.norm(dim=1)
                    scale = torch.clamp(clip / (norms + 1e-12), max=1.0) * wb
                    grad = ((err * scale[:, None]).T @ xb
                            + torch.randn(local.shape, generator=gen) * z * clip) / (q * n)
                local -= lr * grad
            deltas.append(local - weights)
            sizes.append(n)
        avg = sum(d * n for d, n in zip(deltas, sizes)) / sum(sizes)
        momentum = SERVER_MOMENTUM * momentum + avg
        weights = weights + momentum
    return weights


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "data" / "fer2013-synth-25k"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "fedemo-fair-dp-proxy"))
    parser.add_argument("--model", default="face_scatter", choices=["face_scatter", "face_scatter_lcn"])
    parser.add_argument("--no-dp", action="store_true")
    parser.add_argument("--blur", type=float, default=0.0, help="low-pass each face (sigma, px) before the model")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--prior-weights", default="", choices=["", *PRIORS])
    parser.add_argument("--reweight", default="", choices=["", "race", "age", "sex"],
                        help="no DP only: fairness-reweight's balanced weights per node (n / (groups x n_group))")
    parser.add_argument("--reweight-power", type=float, default=1.0, help="those weights to this power, mean 1")
    parser.add_argument("--seed", type=int, default=0, help="the split")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    labels, groups, features = load(Path(args.data), args.model, Path(args.cache), args.blur)
    train, test = split(labels, args.seed)
    x_test, y_test = with_bias(features[test]), labels[test]
    nodes = []
    for idx in train:
        w = prior_weights(groups[args.prior_weights][idx], PRIORS[args.prior_weights]) if args.prior_weights \
            else np.ones(len(idx))
        if args.reweight:
            from client.data.fairness_weights import inverse_frequency_weights

            w = inverse_frequency_weights(groups[args.reweight][idx]).astype(np.float64) ** args.reweight_power
            w = w / w.mean()
        nodes.append((with_bias(features[idx]), torch.from_numpy(labels[idx]), torch.from_numpy(w).float()))
    gen = torch.Generator().manual_seed(1000 + args.seed + 7919 * args.noise_seed)
    start = time.perf_counter()
    weights = train_head(nodes, x_test.shape[1], rounds=args.rounds, epsilon=None if args.no_dp else args.epsilon,
                         lr=args.lr, clip=args.clip, batch=BATCH, gen=gen)
    correct = (x_test @ weights.T).argmax(1).numpy() == y_test
    result = {"model": args.model, "dp": not args.no_dp, "epsilon": None if args.no_dp else args.epsilon,
              "rounds": args.rounds, "lr": args.lr, "clip": args.clip, "prior_weights": args.prior_weights,
              "reweight": args.reweight, "blur": args.blur, "reweight_power": args.reweight_power,
              "seed": args.seed, "noise_seed": args.noise_seed, "accuracy": float(correct.mean()),
              "wall_s": time.perf_counter() - start}
    return record_groups(result, correct, {attribute: g[test] for attribute, g in groups.items()}, args.out)


def record_groups(result: dict, correct: np.ndarray, groups: dict[str, np.ndarray], out: str,
                  digits: int | None = None) -> dict:
    """``result`` with each attribute's per-group accuracy (groups of 20 or more test rows) and gap, printed and
    appended to ``out`` as a JSON line (both proxies)."""
    rounded = (lambda v: v) if digits is None else (lambda v: round(v, digits))  # noqa: E731
    for attribute, g in groups.items():
        acc = {k: rounded(float(correct[g == k].mean())) for k in np.unique(g)
               if (g == k).sum() >= 20 and k not in ("unknown", "unsure")}
        result[attribute] = acc
        result[f"{attribute}_gap"] = rounded(max(acc.values()) - min(acc.values()))
    print(json.dumps(result))
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
