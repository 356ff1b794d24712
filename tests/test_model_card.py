"""model_card.json: signed with the run's key, checked by `fedemo verify`; one changed byte is caught.

The slow test is the newcomer's path: train a tiny federation (`fedemo simulate`), predict on a photo,
export fp32 and int8, read the card, verify it, then change one byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.report.model_card import CARD_FILE, CARD_SIG_FILE, card_problems, write_card
from simulations.cli import main as fedemo
from tests.inference_files import write_images


def flip_byte(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(needle) + len(needle)
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    path.write_bytes(bytes(data))


@pytest.fixture
def card_folder(tmp_path):
    (tmp_path / "report.json").write_bytes(b'{"run":{"rounds_completed":3}}')
    key = Ed25519PrivateKey.generate()
    card = {"kind": "fedemo-model-card", "report_sha256": __import__("hashlib").sha256(
        (tmp_path / "report.json").read_bytes()).hexdigest(), "training": {"rounds": 3}}
    write_card(tmp_path, card, key)
    return tmp_path, key


def test_a_signed_card_verifies_and_any_changed_byte_is_caught(card_folder):
    folder, key = card_folder
    assert card_problems(folder, key.public_key()) == []
    flip_byte(folder / CARD_FILE, b'"rounds":')
    assert any("model_card.json CHANGED" in p for p in card_problems(folder, key.public_key()))


def test_a_card_of_another_key_or_report_or_unsigned_is_refused(card_folder):
    folder, key = card_folder
    other = Ed25519PrivateKey.generate().public_key()
    assert any("not the report's key" in p for p in card_problems(folder, other))
    (folder / "report.json").write_bytes(b'{"run":{"rounds_completed":4}}')
    assert any("another report.json" in p for p in card_problems(folder, key.public_key()))
    (folder / CARD_SIG_FILE).unlink()
    assert any("UNSIGNED" in p for p in card_problems(folder, key.public_key()))


def test_the_card_page_shows_the_signed_card_and_an_edited_page_is_caught(card_folder):
    from server.report.model_card_page import CARD_PAGE_FILE

    folder, key = card_folder
    page = folder / CARD_PAGE_FILE
    assert b"Model card" in page.read_bytes() and card_problems(folder, key.public_key()) == []
    page.write_bytes(page.read_bytes().replace(b"How it was trained", b"How it was tested"))
    assert any(p.startswith(f"{CARD_PAGE_FILE} CHANGED") for p in card_problems(folder, key.public_key()))


@pytest.mark.slow
def test_newcomer_path_train_predict_export_and_a_verified_card(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert fedemo(["simulate", "configs/quickstart.toml", "--set", "num-server-rounds=1", "--set",
                   "synth-samples=400", "--set", "local-epochs=1", "--set", f"data-dir={tmp_path / 'fer'}",
                   "--set", f"runs-dir={runs}"]) == 0
    run = next(runs.iterdir())
    images = write_images(tmp_path / "images")
    capsys.readouterr()
    assert fedemo(["predict", str(run), str(images["rgb_jpeg"])]) == 0
    assert json.loads(capsys.readouterr().out)["error"] is None
    assert fedemo(["export", str(run), "--format", "onnx", "--int8"]) == 0
    card = json.loads((run / CARD_FILE).read_text())
    assert card["training"]["rounds"] == 1 and card["training"]["hospitals"] == ["0", "1", "2", "3"]
    assert card["training"]["dataset"] == "fer2013"
    forms = card["export"]["forms"]
    assert set(forms) == {"pytorch_fp32", "onnxruntime_fp32", "onnxruntime_int8"}
    for row in forms.values():  # the run's own test rows, with every demographic group
        assert 0 <= row["accuracy"] <= 1 and row["n"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0
        assert set(row["groups"]) >= {"sex", "age", "race"}
    assert card["export"]["test_inputs"] == f"test rows of run {run.name}"
    assert card["files"]["int8"]["bytes"] < card["files"]["fp32"]["bytes"]
    capsys.readouterr()
    assert fedemo(["verify", str(run)]) == 0
    flip_byte(run / CARD_FILE, b'"rounds":')
    assert fedemo(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert "INVALID: model_card.json CHANGED" in out
