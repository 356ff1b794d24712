"""White-box gradient canaries for the sample-level audit (Steinke, Nasr, Jagielski 2023; Nasr et al. 2023).

Each canary is one more record of its hospital: Poisson-sampled in every step at the node's own rate q from a
secret generator, with a fixed clipped gradient +C e_i (coin 1) or -C e_i (coin 0), e_i a random unit direction
from its seed: the worst pair replace-one accounting covers. The sampled canaries join the clipped sum before
the noise (Opacus's ``add_noise``, wrapped on this optimizer instance), or without DP the plain batch sum. Score:
the sum over steps of <release - the node's own records' clipped sum, e_i> (DP allows an adversary who knows
every other record), and <release, e_i> for comparison. docs/privacy.md "Empirical audit" says more.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

SCORE = ("white-box gradient canaries: the sum over every DP-SGD step of every round of <noisy clipped sum "
         "released at the step minus the node's own records' clipped sum, e_i> (without dp: the step's plain "
         "gradient sum minus the records' own)")
RELEASED_SCORE = "the sum over every step of <noisy clipped sum released at the step, e_i> (records' own gradients included)"
CANARY_GRADIENT = ("+C e_i (coin 1) or -C e_i (coin 0), e_i a random unit direction over every trained parameter "
                   "(Gaussian, from the canary's seed), C the clipping norm (without dp: dp-max-grad-norm)")


def directions(seeds: list[int], size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(canaries, size) float32: canary i's unit direction from its seed (Gaussian, normalised)."""
    rows = []
    for seed in seeds:
        row = torch.randn(size, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
        rows.append(row / row.norm())
    return torch.stack(rows).to(device)


def _trained(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def _flat(tensors: list[torch.Tensor | None], params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if t is None else t.detach()).reshape(-1).float()
                      for t, p in zip(tensors, params)])


def _add(targets: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for t in targets:
        t.add_(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()


@dataclass
class GradientCanaries:
    """One node's canaries for one train message: hand it to client.local_training.STEP_OBSERVER."""

    seeds: list[int]
    coins: list[int]
    default_norm: float  # C without dp (dp-max-grad-norm); under dp the private step's own clipping norm
    steps: int = 0
    sample_rate: float = 0.0
    canary_norm: float = 0.0  # C: the private step's clipping norm, or default_norm without dp
    scores: np.ndarray = field(init=False)
    released: np.ndarray = field(init=False)
    inclusions: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.scores, self.released = np.zeros(len(self.seeds)), np.zeros(len(self.seeds))
        self.inclusions = np.zeros(len(self.seeds), dtype=np.int64)
        self._signs = torch.tensor([1.0 if c else -1.0 for c in self.coins])
        self._generator = torch.Generator().manual_seed(secrets.randbits(64))  # the canaries' Poisson masks

    def __call__(self, optimizer: torch.optim.Optimizer, loader: DataLoader, private) -> None:
        """Wrap this round's optimizer: every step adds the sampled canaries' gradients and scores the release."""
        params = _trained(optimizer)
        self._params = params
        self._directions = directions(self.seeds, sum(p.numel() for p in params), params[0].device)
        self.sample_rate = 1.0 / len(loader)  # Opacus's q (1 / batches per epoch), and a plain loader's share
        if private is not None:
            self.canary_norm = float(private.max_grad_norm)
            real_add_noise = optimizer.add_noise

            def add_noise() -> None:  # p.summed_grad (clipped sum) -> p.grad (noised): the release
                own = _flat([p.summed_grad for p in params], params)
                _add([p.summed_grad for p in params], self._canary_sum())
                real_add_noise()
                self._score(_flat([p.grad for p in params], params), own)

            optimizer.add_noise = add_noise
            return
        self.canary_norm = float(self.default_norm)
        batch = float(loader.batch_size or 1)  # the plain loss is a batch mean: the sum is batch x the mean
        real_step = optimizer.step

        def step(*args, **kwargs):
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            own = _flat([p.grad for p in params], params) * batch
            canary = self._canary_sum()
            _add([p.grad for p in params], canary / batch)
            self._score(own + canary, own)
            return real_step(*args, **kwargs)

        optimizer.step = step

    def _canary_sum(self) -> torch.Tensor:
        """This step's sampled canaries' gradients, summed (Poisson: each in with probability q, secretly)."""
        included = torch.rand(len(self.seeds), generator=self._generator) < self.sample_rate
        self.inclusions += included.numpy()
        weights = (self._signs * included * self.canary_norm).to(self._directions.device)
        return weights @ self._directions

    def _score(self, released: torch.Tensor, own: torch.Tensor) -> None:
        self.steps += 1
        self.scores += (self._directions @ (released - own)).double().cpu().numpy()
        self.released += (self._directions @ released).double().cpu().numpy()
