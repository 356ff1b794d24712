"""A trained model to ONNX through PyTorch's current exporter (``torch.onnx.export(..., dynamo=True)``).

Inputs keep the training layout with a dynamic batch axis; crops and log-mel features are made outside the
graph by the training code. face_scatter exports its trained head only (kymatio's front end does not
export); the file's metadata says so and ``preprocessing_for`` computes the features first.
Details: docs/design_notes.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

INPUT_NAMES = {"face": ["face"], "voice": ["features", "mask"], "fusion": ["face", "features", "mask"]}
SCATTER_PREPROCESSING = "scatter_features"
FRONT_ENDS = (SCATTER_PREPROCESSING, "lcn_scatter_features", "blur_lcn_scatter_features")  # fixed front ends run before an exported head


def example_inputs(task: str, batch: int = 2, seed: int = 0):
    """Random inputs of the task's shapes (a varied mask, so masking is traced, not constant-folded)."""
    import torch

    from shared_models.audio_features import DEFAULT_CONFIG as cfg

    g = torch.Generator().manual_seed(seed)
    face = torch.rand(batch, 1, 48, 48, generator=g)
    features = torch.randn(batch, cfg.max_segments, cfg.n_mels, cfg.frames_per_segment, generator=g) * 10 - 40
    mask = torch.ones(batch, cfg.max_segments, dtype=torch.bool)
    mask[-1, cfg.max_segments // 2:] = False
    return {"face": (face,), "voice": (features, mask), "fusion": (face, features, mask)}[task]


class _ScatterHead:
    """The face_scatter head alone, taking scattering features (N, NUM_FEATURES)."""

    @staticmethod
    def module(model):
        import torch

        class Head(torch.nn.Module):
            def __init__(self, head):
                super().__init__()
                self.head = head

            def forward(self, features):
                return self.head(features)

        return Head(model.head).eval()


def export_onnx(model, name: str, task: str, path: Path) -> Path:
    """Write ``model`` (eval mode) to ``path`` with a dynamic batch axis; returns the path."""
    import onnx
    import torch

    model = model.eval().cpu()
    inputs = example_inputs(task)
    names = list(INPUT_NAMES[task])
    preprocessing = ""
    front_end = getattr(model, "fixed_features", None)  # face_scatter, face_scatter_lcn: a fixed front end
    if front_end is not None:
        model, inputs, names = _ScatterHead.module(model), (front_end(inputs[0]),), ["scatter_features"]
        preprocessing = front_end.__name__  # the scatter_models function predict runs before the graph
    outputs = ["logits", "valence_arousal"] if getattr(model, "valence_arousal", False) else ["logits"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, inputs, dynamo=True, dynamic_shapes=tuple({0: batch} for _ in inputs),
                                    input_names=names, output_names=outputs, optimize=True, verbose=False)
    program.save(str(path))
    proto = strip_debug_info(onnx.load(str(path)))
    for key, value in (("fedemo.model", name), ("fedemo.task", task), ("fedemo.preprocessing", preprocessing)):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return Path(path)


def strip_debug_info(proto):
    """Drop what only debugging needs (per-node stack traces and doc strings, intermediate shapes): about 60 KB
    of a 450 KB face_cnn file, which would otherwise weigh on every int8 file more than its weights do."""
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    del proto.graph.value_info[:]
    proto.graph.doc_string = ""
    return proto


def metadata(path: Path) -> dict[str, str]:
    """The FedEmo keys of an exported file (``fedemo.model``, ``fedemo.task``, ``fedemo.preprocessing``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def preprocessing_for(path: Path):
    """The step an exported file needs before its graph (None for most): the scattering models' fixed front end
    (``scatter_features``, or ``lcn_scatter_features`` for face_scatter_lcn), run with the training code."""
    tag = metadata(path).get("fedemo.preprocessing", "")
    if tag not in FRONT_ENDS:
        return None

    def scatter(inputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        import torch

        from shared_models.models import scatter_models

        front_end = getattr(scatter_models, tag)
        return (front_end(torch.from_numpy(np.ascontiguousarray(inputs[0]))).numpy(),)

    return scatter
