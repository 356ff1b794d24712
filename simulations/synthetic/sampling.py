"""Random draws shared by the synthetic face and voice populations (same calls, so the same bytes per seed)."""

from __future__ import annotations

import numpy as np


def choice(rng: np.random.Generator, freqs: dict) -> object:
    """One key of ``freqs``, drawn with probabilities proportional to its values."""
    keys = list(freqs)
    p = np.array([freqs[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def allocate(n: int, freqs: dict, rng: np.random.Generator) -> list:
    """``n`` labels with exactly proportional counts (largest remainder), shuffled."""
    keys = list(freqs)
    p = np.array([freqs[k] for k in keys], dtype=float)
    p /= p.sum()
    counts = np.floor(p * n).astype(int)
    order = np.argsort(-(p * n - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    labels = np.repeat(np.arange(len(keys)), counts)
    return [keys[i] for i in rng.permutation(labels)]
