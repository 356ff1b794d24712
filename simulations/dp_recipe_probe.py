"""DP recipe probe: the federation's DP client work in one plain process, for fast recipe search.

    python -m simulations.dp_recipe_probe --samples 8000 --rounds 8 --eps 8 --opt adam --lr 3e-3 \
        --batch 64 --epochs 1 --server-mom 0.9

Same data, partitions and client code as a simulation (client_samples,
calibrate_noise, make_private, train_epochs) with FedAvg (optionally with
server momentum, as FedAvgM) done by averaging state dicts, and no Flower:
several configurations fit side by side on a small machine. Each client
calibrates its noise for the whole run with a fresh budget, as a node does in
a fresh run. Prints one JSON line: final accuracy, the majority-class rate of
the same test rows and the accuracy after every round. Figures for
docs/privacy.md, not tests; the real runs are ``fedemo simulate``.
"""
import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from client.dp_training import DPPlan, calibrate_noise, make_private
from client.local_training import evaluate, train_epochs
from client.node_data import client_samples
from shared_models.registry import build_model
from simulations.run_config import load_run_config
from simulations.synthetic_data import synthesize


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.toml"))
    p.add_argument("--data", default="runs/dp-probe/data")
    p.add_argument("--eps", type=float, default=8.0)  # 0: no DP
    p.add_argument("--opt", default="sgd"); p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--mom", type=float, default=0.0); p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32); p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None); p.add_argument("--clients", type=int, default=None)
    p.add_argument("--samples", type=int, default=None); p.add_argument("--frac", type=float, default=None)
    p.add_argument("--width", type=int, default=16); p.add_argument("--embed", type=int, default=128)
    p.add_argument("--adam-eps", type=float, default=1e-8)
    p.add_argument("--server-lr", type=float, default=1.0); p.add_argument("--server-mom", type=float, default=0.0)
    p.add_argument("--augment", type=int, default=1)
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ov = {"data-dir": a.data, "augment": bool(a.augment)}
    if a.rounds: ov["num-server-rounds"] = a.rounds
    if a.clients: ov["num-supernodes"] = a.clients; ov["min-available-nodes"] = a.clients
    if a.samples: ov["synth-samples"] = a.samples
    if a.epochs: ov["local-epochs"] = a.epochs
    if a.frac: ov["fraction-train"] = a.frac
    _, s = load_run_config(a.config, ov)
    if not (Path(a.data) / "fer2013.csv").exists():
        synthesize(s.dataset, a.data, s.synth_samples, s.seed)
    K = s.num_supernodes
    clients = [client_samples(s, {"partition-id": i, "num-partitions": K}, a.data) for i in range(K)]
    def mk():
        torch.manual_seed(s.seed)
        return build_model("face_cnn", width=a.width, embed_dim=a.embed)
    g = mk()
    def ev(model):
        conf = sum(evaluate(model, DataLoader(c.test, batch_size=128), n_inputs=1, device=torch.device("cpu")).confusion for c in clients)
        return np.trace(conf) / conf.sum(), conf.sum(0).max() / conf.sum(), conf.sum(1).max() / conf.sum()
    sig_cache = {}
    rng = np.random.default_rng(s.seed)
    t0 = time.time(); hist = [round(ev(g)[0], 3)]
    vel = None; sigmas = []
    for r in range(1, s.num_server_rounds + 1):
        m = max(1, int(round(s.fraction_train * K)))
        chosen = sorted(rng.choice(K, m, replace=False)) if m < K else range(K)
        states = []
        for i in chosen:
            c = clients[i]
            c.train.reseed([s.seed, r, i])
            model = copy.deepcopy(g); model.train()
            loader = DataLoader(c.train, batch_size=a.batch, shuffle=True)
            if a.opt == "adam":
                opt = torch.optim.Adam(model.parameters(), lr=a.lr, eps=a.adam_eps)
            else:
                opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.mom)
            E = s.local_epochs
            if a.eps > 0:
                n = len(c.train); q = 1 / len(loader); steps = E * len(loader)
                key = (round(q, 6), steps, n)
                if key not in sig_cache:
                    sig_cache[key] = calibrate_noise([], q, steps * s.num_server_rounds, target_epsilon=a.eps,
                                                     delta=1 / (10 * n), accountant="prv")
                plan = DPPlan(sig_cache[key], q, steps, a.clip); sigmas.append(plan.noise_multiplier)
                pm, po, pl, _ = make_private(model, opt, loader, plan, accountant="prv", secure_mode=False)
                train_epochs(pm, pl, po, epochs=E, n_inputs=1, device=torch.device("cpu"), private=True)
                sd = pm._module.state_dict()
            else:
                train_epochs(model, loader, opt, epochs=E, n_inputs=1, device=torch.device("cpu"))
                sd = model.state_dict()
            states.append((len(c.train), sd))
        tot = sum(n for n, _ in states)
        gs = g.state_dict()
        avg = {k: sum(n * sd[k].float() for n, sd in states) / tot for k in gs}
        delta = {k: avg[k] - gs[k].float() for k in gs}
        if vel is None: vel = {k: torch.zeros_like(v) for k, v in delta.items()}
        vel = {k: a.server_mom * vel[k] + delta[k] for k in gs}
        g.load_state_dict({k: gs[k].float() + a.server_lr * vel[k] for k in gs})
        hist.append(round(ev(g)[0], 3))
    acc, predmaj, truemaj = ev(g)
    print(json.dumps({"tag": a.tag, "eps": a.eps, "opt": a.opt, "lr": a.lr, "mom": a.mom, "clip": a.clip, "batch": a.batch,
                      "E": s.local_epochs, "R": s.num_server_rounds, "K": K, "width": a.width, "smom": a.server_mom,
                      "sigma": round(float(np.mean(sigmas)), 2) if sigmas else 0, "acc": round(acc, 3),
                      "majority": round(truemaj, 3), "hist": hist, "s": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
