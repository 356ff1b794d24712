"""Write the embedded synthetic stand-in of a published dataset, in that dataset's own layout.

The synthetic data goes through exactly the loaders that read real copies, so
every test and every default run exercises the real code path.
"""

from __future__ import annotations

from pathlib import Path

from shared_models.datasets import DATASETS

SYNTHETIC_DATASETS = tuple(DATASETS)  # every dataset of the table has a synthetic stand-in


def synthesize(dataset: str, out_dir: str | Path, n: int, seed: int, *, with_faces: bool = False) -> Path:
    """Write about ``n`` samples of ``dataset`` to ``out_dir``; deterministic from ``seed``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dataset == "fer2013":
        from simulations.synthetic.synth_faces import write_fer2013

        write_fer2013(out_dir, n, seed)
    elif dataset == "rafdb":
        from simulations.synthetic.synth_faces import write_rafdb

        write_rafdb(out_dir, n, seed)
    elif dataset == "cremad":
        from simulations.synthetic.synth_voices import write_cremad

        write_cremad(out_dir, n, seed, with_faces=with_faces)
    elif dataset == "ravdess":
        from simulations.synthetic.synth_voices import write_ravdess

        from simulations.synthetic.synth_voices import ravdess_takes_per_actor

        # RAVDESS has a fixed design per actor (60 speech takes); n beyond 24 x 60 is capped there.
        per_actor = min(max(1, n // 24), len(ravdess_takes_per_actor()))
        write_ravdess(out_dir, n_actors=24, seed=seed, clips_per_actor=per_actor)
    else:
        raise ValueError(f"no synthetic generator for {dataset!r}; choose one of {', '.join(SYNTHETIC_DATASETS)}")
    return out_dir
