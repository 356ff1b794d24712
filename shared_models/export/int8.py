"""Static int8 quantisation of an exported ONNX model in ONNX Runtime: QDQ format, per-channel weights.

Activation ranges are calibrated (min-max) on the inputs the caller gives:
synthetic data by default, or a hospital's own folder, read where the
command runs (calibration on private data happens at the hospital, never at
the coordinator). The graph is first run through ONNX Runtime's
``quant_pre_process`` (shape inference and graph clean-up), as its
documentation advises. ``quantized_operators`` counts the QuantizeLinear /
DequantizeLinear (and QLinear*) nodes of a file, so a test can tell a
quantised graph from a renamed fp32 one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np


# The compute-heavy operators: their weights go int8 (per output channel) and ONNX Runtime runs them as integer
# kernels. Pooling, reshapes, GroupNorm and the LSTM's elementwise gates stay float between them: quantising them
# adds QuantizeLinear/DequantizeLinear pairs that cost more than they save on models this small, and weights that
# feed several of them (the unrolled LSTM's) cannot be quantised in ONNX Runtime's shared-parameter mode.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _reader(names: list[str], batches: Sequence[tuple[np.ndarray, ...]]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([dict(zip(names, batch)) for batch in batches])

        def get_next(self):
            return next(self.items, None)

    return Reader()


def quantize_int8(fp32_path: Path, out_path: Path, batches: Sequence[tuple[np.ndarray, ...]]) -> Path:
    """Write the int8 (QDQ, per-channel) model of ``fp32_path`` to ``out_path``, calibrated on ``batches``."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not batches:
        raise ValueError("int8 calibration needs at least one batch of inputs")
    names = [i.name for i in ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()]
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), _reader(names, batches), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    _copy_metadata(fp32_path, out_path)
    return Path(out_path)


@contextlib.contextmanager
def _quiet_logging():
    """ONNX Runtime's quantiser logs a WARNING per 1-D weight it quantises per tensor instead of per channel
    (GroupNorm scales, biases): expected here, and noise on a user's console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _copy_metadata(source: Path, target: Path) -> None:
    """Keep the fp32 file's FedEmo metadata (model name, preprocessing) in the int8 file; drop debug info."""
    import onnx

    from shared_models.export.onnx_export import strip_debug_info

    src, dst = onnx.load(str(source)), strip_debug_info(onnx.load(str(target)))
    have = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in have:
            dst.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(dst, str(target))


def quantized_operators(path: Path) -> dict[str, int]:
    """How many QuantizeLinear, DequantizeLinear and QLinear*/Integer nodes the ONNX file holds."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type.startswith("QLinear") \
                or node.op_type.endswith("Integer"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
