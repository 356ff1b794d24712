"""A node's data: a hospital's own folder (node config) or a simulated partition."""

from __future__ import annotations

import numpy as np

from client.data.node_data import client_samples, train_test_split
from simulations.run_config import load_run_config
from simulations.synthetic.synth_faces import write_fer2013, write_rafdb


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
    from client.data import node_data

    write_rafdb(tmp_path / "rafdb", 200, seed=6)
    _, settings = load_run_config(None, {"dataset": "rafdb", "partitioner": "iid", "seed": 3})
    parses = []
    real_load = node_data.load_dataset
    monkeypatch.setattr(node_data, "load_dataset", lambda *args, **kw: parses.append(args) or real_load(*args, **kw))
    first_round = [client_samples(settings, {"partition-id": pid, "num-partitions": 4}, str(tmp_path / "rafdb"))
                   for pid in range(4)]
    second_round = client_samples(settings, {"partition-id": 1, "num-partitions": 4}, str(tmp_path / "rafdb"))
    assert len(parses) == 1
    assert second_round is first_round[1]
    for cached in (node_data._load_resolved, node_data._partitions, node_data._simulated_samples,
                   node_data._hospital_samples):
        assert cached.cache_info().maxsize is not None  # bounded: a long-lived worker does not grow without end


def _fer_folder_without_split(root, lines: list[str]) -> str:
    """A FER2013 folder whose CSV has no Usage column: the node splits it itself."""
    root.mkdir(parents=True)
    (root / "fer2013.csv").write_text("emotion,pixels\n" + "".join(f"{line}\n" for line in lines))
    return str(root)


def test_removing_any_one_record_from_a_folder_moves_no_other_between_train_and_test(tmp_path):
    """Record-level DP compares a folder with and without one record: the other records must keep their sides.

    Each neighbour is a real folder one CSV line shorter, read through the node's own path; records are
    compared by content, since a CSV row's line number moves when an earlier line goes."""
    write_fer2013(tmp_path / "published", 80, seed=8)
    rows = [line.rsplit(",", 1)[0] for line in (tmp_path / "published" / "fer2013.csv").read_text().splitlines()[1:]]
    _, settings = load_run_config(None, {"dataset": "fer2013", "test-fraction": 0.25})

    def sides(folder: str) -> dict[bytes, str]:
        node = {"data-path": folder, "dataset-format": "fer2013", "client-id": "hospital-a"}
        samples = client_samples(settings, node, data_dir="")
        assert set(samples.train.data.published_split) == {""}  # the node's own split, not a published one
        return {**{face.tobytes(): "train" for face in samples.train.data.faces},
                **{face.tobytes(): "test" for face in samples.test.data.faces}}

    full = sides(_fer_folder_without_split(tmp_path / "full", rows))
    assert len(full) == 80 and 0 < list(full.values()).count("test") < 80
    for removed in range(len(rows)):
        neighbour = sides(_fer_folder_without_split(tmp_path / f"without-{removed}", rows[:removed] + rows[removed + 1:]))
        moved = [key for key, side in neighbour.items() if full[key] != side]
        assert len(neighbour) == 79
        assert len(moved) == 0, f"removing line {removed + 2} moved {len(moved)} other records between train and test"


def test_the_keyed_split_holds_out_about_test_fraction_of_2000_records():
    keys = [f"Image/aligned/img_{i:05d}.jpg".encode() for i in range(2000)]
    for fraction in (0.1, 0.2, 0.5):
        train, test = train_test_split(np.arange(2000), fraction, seed=42, client_id="h", keys=keys)
        assert len(train) + len(test) == 2000 and not set(train) & set(test)
        assert abs(len(test) / 2000 - fraction) < 0.03  # binomial sd <= 0.011


def test_a_hospitals_own_split_is_the_same_in_every_run_whatever_its_seed(tmp_path):
    """Its ledger composes all runs on its data and the evaluation epsilon covers test records only, so a test
    record must never become a training record in a later run with another seed."""
    write_fer2013(tmp_path / "published", 60, seed=9)
    rows = [line.rsplit(",", 1)[0] for line in (tmp_path / "published" / "fer2013.csv").read_text().splitlines()[1:]]
    folder = _fer_folder_without_split(tmp_path / "hospital", rows)
    node = {"data-path": folder, "dataset-format": "fer2013", "client-id": "hospital-b"}
    splits = []
    for seed in (1, 2, 3):
        _, settings = load_run_config(None, {"dataset": "fer2013", "seed": seed})
        samples = client_samples(settings, node, data_dir="")
        splits.append(sorted(str(ref) for ref in samples.test.data.refs))
    assert splits[0] == splits[1] == splits[2] and 0 < len(splits[0]) < 60


def test_a_hospital_node_logs_how_many_faces_are_constant_or_tiny(tmp_path, caplog):
    """Kept (they are not malformed) but counted in the node's own log, once per load (issue 20)."""
    import logging

    from PIL import Image

    root = tmp_path / "rafdb"
    write_rafdb(root, 60, seed=7)
    aligned = sorted((root / "Image" / "aligned").glob("train_*_aligned.jpg"))
    for path in aligned[:3]:  # all black, as a failed export writes them
        Image.fromarray(np.zeros((100, 100), np.uint8)).save(path)
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(aligned[3])  # a 2x1 "face" (not constant)
    _, settings = load_run_config(None, {"dataset": "rafdb"})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        samples = client_samples(settings, {"data-path": str(root), "dataset-format": "rafdb"}, "")
    assert len(samples.train) + len(samples.test) == 60
    messages = [r.getMessage() for r in caplog.records]
    assert any("constant image: 3 kept but flagged" in m for m in messages), messages
    assert any("image under 24 px: 1 kept but flagged" in m for m in messages), messages
