"""Inputs for checking and measuring an exported model: a simulated run's test rows, or a calibration folder.

``run_test_set`` rebuilds every simulated node's test split exactly as the
node does (``client.data.node_data.client_samples``), with labels and
demographic groups, so fp32 and int8 accuracy can be compared per group.
``folder_inputs`` reads a folder of face images or clips through the
prediction preprocessing (a hospital's calibration set stays on its machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class InputSet:
    inputs: tuple[np.ndarray, ...]  # the model's inputs, stacked along the batch axis
    labels: np.ndarray | None = None
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # attribute -> group name per row
    source: str = ""

    def __len__(self) -> int:
        return len(self.inputs[0])

    def batches(self, size: int) -> list[tuple[np.ndarray, ...]]:
        return [tuple(x[i:i + size] for x in self.inputs) for i in range(0, len(self), size)]


def run_test_set(run_dir: Path, limit: int | None = None) -> InputSet | None:
    """The simulated run's test rows (all nodes), or None for a run without a shared data folder."""
    import json

    from client.data.node_data import client_samples
    from shared_models.config_error import ConfigError
    from shared_models.settings.run_settings import RunSettings

    config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    data_dir = str(config.get("data_dir") or "")
    if not data_dir or not Path(data_dir).exists():
        return None
    try:
        settings = RunSettings.from_config(config["run_config"])
    except ConfigError:  # a run folder written by an older FedEmo (keys added since): no test rows, say so
        return None
    columns: list[list[np.ndarray]] = []
    labels, groups = [], {}
    for pid in range(settings.num_supernodes):
        test = client_samples(settings, {"partition-id": pid, "num-partitions": settings.num_supernodes},
                              data_dir).test
        for i in range(len(test)):
            item = test[i]
            arrays = [t.numpy() for t in item[:-2]]
            columns = columns or [[] for _ in arrays]
            for col, a in zip(columns, arrays):
                col.append(a)
            labels.append(int(item[-2]))
        for attr, values in test.data.demographics.items():
            groups.setdefault(attr, []).extend(str(v) for v in values)
        if limit and len(labels) >= limit:
            break
    n = len(labels) if not limit else min(limit, len(labels))
    return InputSet(tuple(np.stack(c[:n]) for c in columns), np.asarray(labels[:n]),
                    {a: np.asarray(v[:n], dtype=object) for a, v in groups.items()}, f"test rows of run {Path(run_dir).name}")


def folder_inputs(folder: Path, task: str, limit: int = 512) -> InputSet:
    """Faces (detected, else the whole picture) or clips of ``folder``, preprocessed as for prediction."""
    from client.inference.predict import expand_inputs, read_clip_features, read_image_face
    from client.inference.run_model import input_kind
    from shared_models.config_error import ConfigError
    from shared_models.preprocessing.faces import face_batch

    faces, feats, masks = [], [], []
    want = {"face": "image", "voice": "clip"}.get(task)
    if want is None:
        raise ConfigError(f"--calibration {folder}: a fusion model is calibrated on synthetic data only (it needs "
                          "paired faces and clips)")
    for path in expand_inputs([str(folder)]):
        if input_kind(path) != want or len(faces) + len(feats) >= limit:
            continue
        try:
            if want == "image":
                try:
                    faces.append(read_image_face(path, "detect")[0])
                except ValueError:
                    faces.append(read_image_face(path, "whole")[0])
            else:
                f, m = read_clip_features(path)
                feats.append(f[0])
                masks.append(m[0])
        except ValueError:
            continue
    if not faces and not feats:
        raise ConfigError(f"--calibration {folder}: no readable {want} files in it")
    inputs = (face_batch(np.stack(faces)),) if faces else (np.stack(feats), np.stack(masks))
    return InputSet(inputs, source=f"folder {folder} ({len(faces) or len(feats)} files, read where the command ran)")
