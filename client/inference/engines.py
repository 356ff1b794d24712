"""What runs the network at prediction time: the PyTorch model, or an exported ONNX file in ONNX Runtime.

Both take the model's inputs as numpy arrays (faces (N, 1, 48, 48) float32 in
[0, 1]; log-mel segments (N, 6, 128, 32) float32 and a bool mask (N, 6)) and
return the 7 emotion probabilities and, for models with a valence/arousal
head, (N, 2) valence/arousal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class TorchEngine:
    """The run's PyTorch model (CPU or CUDA)."""

    def __init__(self, model, device: str = "cpu"):
        self.model = model
        self.device = device

    def run(self, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode():
            out = self.model(*(torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in inputs))
        logits, va = out if isinstance(out, tuple) else (out, None)
        return softmax(logits.float().cpu().numpy()), None if va is None else va.float().cpu().numpy()


class OrtEngine:
    """An exported ONNX model (fp32 or int8) in ONNX Runtime, ``threads`` intra-op threads.

    ``prepare`` is a separate preprocessing step a graph may need first (``face_scatter``'s scattering
    front end when it is exported as its own graph; ``shared_models/export/onnx_export.py``).
    """

    def __init__(self, path: Path | str, threads: int = 1, providers: list[str] | None = None, prepare=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.prepare = prepare

    def run(self, inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        if self.prepare is not None:
            inputs = self.prepare(inputs)
        outs = self.session.run(None, dict(zip(self.names, inputs)))
        return softmax(outs[0]), (outs[1] if len(outs) > 1 else None)
