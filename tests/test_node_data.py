"""A node's data: a hospital's own folder (node config) or a simulated partition."""

from __future__ import annotations

import numpy as np

from client.node_data import client_samples
from simulations.run_config import load_run_config
from simulations.synth_faces import write_rafdb


def test_hospital_node_reads_its_folder_and_keeps_the_published_split(tmp_path):
    write_rafdb(tmp_path / "rafdb", 120, seed=4)
    _, settings = load_run_config(None, {"dataset": "rafdb"})
    node_config = {"data-path": str(tmp_path / "rafdb"), "dataset-format": "rafdb", "client-id": "hospital-a"}
    samples = client_samples(settings, node_config, data_dir="ignored-for-deployed-nodes")
    assert samples.client_id == "hospital-a"
    assert set(samples.train.data.published_split) == {"train"} and set(samples.test.data.published_split) == {"test"}
    assert len(samples.train) + len(samples.test) == 120
    face, label, va = samples.train[0]
    assert face.shape == (1, 48, 48) and 0.0 <= float(face.min()) and float(face.max()) <= 1.0
    assert 0 <= int(label) < 7


def test_simulated_nodes_get_disjoint_reproducible_partitions(tmp_path):
    write_rafdb(tmp_path / "rafdb", 200, seed=5)
    _, settings = load_run_config(None, {"dataset": "rafdb", "partitioner": "iid", "seed": 3})
    rows = []
    for pid in range(4):
        s = client_samples(settings, {"partition-id": pid, "num-partitions": 4}, str(tmp_path / "rafdb"))
        rows.append(set(s.train.data.refs) | set(s.test.data.refs))
        assert not set(s.train.data.refs) & set(s.test.data.refs)
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == 200
    again = client_samples(settings, {"partition-id": 2, "num-partitions": 4}, str(tmp_path / "rafdb"))
    assert set(again.train.data.refs) | set(again.test.data.refs) == rows[2]
    assert np.all(again.train.data.labels >= 0)


def test_a_worker_process_parses_a_dataset_once_for_all_its_nodes_and_rounds(tmp_path, monkeypatch):
    """Flower reuses a few workers for many virtual clients; each must not reparse the folder."""
    from client import node_data

    write_rafdb(tmp_path / "rafdb", 200, seed=6)
    _, settings = load_run_config(None, {"dataset": "rafdb", "partitioner": "iid", "seed": 3})
    parses = []
    real_load = node_data.load_dataset
    monkeypatch.setattr(node_data, "load_dataset", lambda *args: parses.append(args) or real_load(*args))
    first_round = [client_samples(settings, {"partition-id": pid, "num-partitions": 4}, str(tmp_path / "rafdb"))
                   for pid in range(4)]
    second_round = client_samples(settings, {"partition-id": 1, "num-partitions": 4}, str(tmp_path / "rafdb"))
    assert len(parses) == 1
    assert second_round is first_round[1]
    for cached in (node_data._load_resolved, node_data._partitions, node_data._simulated_samples,
                   node_data._hospital_samples):
        assert cached.cache_info().maxsize is not None  # bounded: a long-lived worker does not grow without end
