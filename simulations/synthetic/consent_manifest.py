"""A consent manifest for a synthetic dataset, so simulations and tests exercise the consent path.

``fedemo data synth ... --consent-refusal-rate R`` writes ``consent.csv`` beside the data: every record
the loader reads, named as the manifest names it (``client.data.consent.record_ids``), each refusing with
probability R (a seeded draw: the same seed, the same manifest). ``refuse`` chooses the refused rows
instead (tests refuse every record of one label or group, then check none of them reaches anything).
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from client.data.consent import COLUMNS, MANIFEST_FILE, record_ids
from client.data.loaders.registry import every_record
from client.data.loaders.base import EmotionData

FORM_VERSION = "synthetic-v1"


def write_consent_manifest(dataset: str, folder: str | Path, refusal_rate: float = 0.0, seed: int = 0, *,
                           refuse: Callable[[EmotionData], np.ndarray] | None = None,
                           unnamed: Callable[[EmotionData], np.ndarray] | None = None,
                           task: str | None = None) -> Path:
    """Write ``folder/consent.csv``; returns its path. ``unnamed`` rows are left out of the manifest."""
    if not 0.0 <= refusal_rate <= 1.0:
        raise ValueError(f"consent refusal rate {refusal_rate}: must be between 0 and 1")
    data = every_record(dataset, folder, task)
    ids = record_ids(data)
    if refuse is not None:
        refused = np.asarray(refuse(data), dtype=bool)
    else:
        refused = np.random.default_rng([seed, 26]).random(len(ids)) < refusal_rate
    skip = np.zeros(len(ids), dtype=bool) if unnamed is None else np.asarray(unnamed(data), dtype=bool)
    day = datetime.date(2026, 1, 1)
    path = Path(folder) / MANIFEST_FILE
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        written = set()
        for row, record in enumerate(ids):
            if skip[row] or record in written:  # identical FER2013 rows share one id: listed once
                continue
            written.add(record)
            writer.writerow([record, "no" if refused[row] else "yes", FORM_VERSION,
                             (day + datetime.timedelta(days=row % 300)).isoformat()])
    return path
