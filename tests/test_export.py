"""`fedemo export`: ONNX through PyTorch's exporter equals PyTorch in ONNX Runtime; int8 is really quantised.

Every model family is exported and run in ONNX Runtime against PyTorch (< 1e-4), and quantised (QDQ
operators, int8 weights). The command runs on a run folder (the fixture run's record, seeded face_cnn
weights, its report signed by the real `fedemo report --build`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared_models.datasets import MODELS as MODEL_TABLE

from simulations.cli import main as fedemo
from tests.inference_files import run_folder, write_images

pytestmark = pytest.mark.slow  # ONNX export takes 10-60 s per model


def int8_weight_initializers(path: Path) -> int:
    import onnx

    return sum(1 for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = run_folder(tmp_path_factory.mktemp("export") / "run", "face_cnn")
    assert fedemo(["report", "--build", str(run)]) == 0
    assert fedemo(["export", str(run), "--format", "onnx", "--int8"]) == 0
    return run


def test_fp32_onnx_matches_pytorch(exported):
    import onnxruntime as ort
    import torch

    from client.inference.run_model import load_run_model

    model = load_run_model(exported).model
    session = ort.InferenceSession(str(exported / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    faces = np.random.default_rng(0).random((17, 1, 48, 48), dtype=np.float32)  # a batch size never exported
    (logits,) = session.run(None, {"face": faces})
    with torch.no_grad():
        expected = model(torch.from_numpy(faces)).numpy()
    assert np.abs(logits - expected).max() < 1e-4
    card = json.loads((exported / "model_card.json").read_text())
    assert card["export"]["fp32_max_abs_difference"] < 1e-4


def test_int8_model_has_quantised_operators_and_int8_weights(exported):
    from shared_models.export.int8 import quantized_operators

    fp32, int8 = exported / "export" / "model.onnx", exported / "export" / "model.int8.onnx"
    ops = quantized_operators(int8)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert quantized_operators(fp32) == {}
    assert int8_weight_initializers(int8) >= 4  # 3 convolutions and the projection, per-channel int8
    assert int8.stat().st_size < fp32.stat().st_size / 2


def test_predict_runs_the_int8_file(exported, tmp_path, capsys):
    images = write_images(tmp_path / "images")
    code = fedemo(["predict", str(exported), str(images["rgb_jpeg"]), "--onnx",
                   str(exported / "export" / "model.int8.onnx")])
    int8 = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == 0 and int8["error"] is None
    fedemo(["predict", str(exported), str(images["rgb_jpeg"])])
    fp32 = json.loads(capsys.readouterr().out.splitlines()[0])
    assert int8["box"] == fp32["box"]
    assert max(abs(int8["probabilities"][e] - fp32["probabilities"][e]) for e in fp32["probabilities"]) < 0.1


def test_calibration_folder_is_named_in_the_card(exported, tmp_path, capsys):
    images = write_images(tmp_path / "calibration")
    out = tmp_path / "out"
    assert fedemo(["export", str(exported), "--int8", "--calibration", str(images["rgb_jpeg"].parent),
                   "--out", str(out)]) == 0
    card = json.loads((exported / "model_card.json").read_text())
    assert card["export"]["calibration"]["source"].startswith(f"folder {images['rgb_jpeg'].parent} (5 files")
    assert (out / "model.int8.onnx").is_file()


@pytest.mark.parametrize("name", sorted(MODEL_TABLE))  # every family the table registers, face_scatter_lcn too
def test_every_model_family_exports_equal_and_quantises(name, tmp_path):
    import torch

    from client.inference.engines import OrtEngine
    from shared_models.export.int8 import quantize_int8, quantized_operators
    from shared_models.export.onnx_export import example_inputs, export_onnx, preprocessing_for
    from shared_models.models.registry import MODELS, build_model, model_task

    torch.manual_seed(1)
    va = MODELS[name].supports_valence_arousal
    model = build_model(name, valence_arousal=va).eval()
    task = model_task(name)
    path = export_onnx(model, name, task, tmp_path / "m.onnx")
    inputs = example_inputs(task, batch=3, seed=5)
    prepare = preprocessing_for(path)
    feeds = tuple(x.numpy() for x in inputs)
    feeds = prepare(feeds) if prepare else feeds
    engine = OrtEngine(path)
    outs = engine.session.run(None, dict(zip(engine.names, feeds)))
    with torch.no_grad():
        expected = model(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(outs) == len(expected) == (2 if va else 1)
    for got, want in zip(outs, expected):
        assert np.abs(got - want.numpy()).max() < 1e-4
    int8 = quantize_int8(path, tmp_path / "m.int8.onnx", [feeds])
    ops = quantized_operators(int8)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert int8_weight_initializers(int8) >= 1


def test_predict_with_an_onnx_file_never_loads_pytorch(exported, tmp_path):
    """The start-up path of a bedside device: ONNX Runtime, OpenCV and Pillow only."""
    import subprocess
    import sys

    images = write_images(tmp_path / "images")
    code = ("import sys; from simulations.cli import main; "
            f"rc = main(['predict', {str(exported)!r}, {str(images['grey_png'])!r}, '--onnx', "
            f"{str(exported / 'export' / 'model.int8.onnx')!r}]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH 0", out.stderr
    assert json.loads(out.stdout.splitlines()[0])["error"] is None


def test_an_onnx_file_of_another_model_is_refused(exported, tmp_path, capsys):
    other = run_folder(tmp_path / "voice", "voice_stats")
    code = fedemo(["predict", str(other), "x.wav", "--onnx", str(exported / "export" / "model.onnx")])
    assert code == 2 and "exported from model 'face_cnn'" in capsys.readouterr().err
