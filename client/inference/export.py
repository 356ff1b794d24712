"""Export a run's model to ONNX (fp32, optionally int8) and measure each form against PyTorch.

For each form (PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8): file
size, latency per input at batch 1 on one thread (p50, p95), single-thread
throughput at batch 32, accuracy overall and per demographic group on the
test inputs, and the largest absolute difference of the ONNX logits from
PyTorch's. The figures go into the model card (``server/report/model_card.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from client.inference.test_data import InputSet

FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
GROUP_DROP_FLAG = 0.02  # a group losing more than 2 points under int8 is flagged


def latency(engine, one: tuple[np.ndarray, ...], repeats: int = 100) -> dict[str, float]:
    """p50/p95 milliseconds per input at batch 1 (after 5 warm-up calls)."""
    for _ in range(5):
        engine.run(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run(one)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def throughput(engine, data: InputSet, batch: int = 32, seconds: float = 1.0) -> float:
    """Inputs per second at ``batch`` (cycling the test inputs for about ``seconds``)."""
    batches = data.batches(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for b in batches:
            engine.run(b)
            done += len(b[0])
    return done / (time.perf_counter() - start)


def accuracy(engine, data: InputSet) -> tuple[np.ndarray, dict]:
    """Logits-free predictions and accuracy overall and per group (None without labels)."""
    probs = np.concatenate([engine.run(b)[0] for b in data.batches(256)])
    pred = probs.argmax(axis=1)
    if data.labels is None:
        return probs, {}
    hit = pred == data.labels
    groups = {attr: {str(g): {"accuracy": float(hit[values == g].mean()), "n": int((values == g).sum())}
                     for g in sorted(set(values.tolist()))} for attr, values in data.groups.items()}
    return probs, {"accuracy": float(hit.mean()), "n": int(len(hit)), "groups": groups}


def measure(engine, data: InputSet, size_bytes: int | None) -> tuple[np.ndarray, dict]:
    probs, acc = accuracy(engine, data)
    one = tuple(x[:1] for x in data.inputs)
    return probs, {"size_bytes": size_bytes, **latency(engine, one),
                   "throughput_per_s": throughput(engine, data), **acc}


def group_drops(fp32: dict, int8: dict, limit: float = GROUP_DROP_FLAG) -> list[str]:
    """Groups whose int8 accuracy is more than ``limit`` below fp32's (quantisation can hurt small groups)."""
    out = []
    for attr, groups in (fp32.get("groups") or {}).items():
        for g, row in groups.items():
            other = (int8.get("groups") or {}).get(attr, {}).get(g)
            if other and row["accuracy"] - other["accuracy"] > limit:
                out.append(f"{attr}={g}: {row['accuracy']:.3f} -> {other['accuracy']:.3f} (n={row['n']})")
    return out


def export_run(run, out_dir: Path, *, int8: bool, calibration: InputSet | None, test: InputSet) -> dict:
    """Write model.onnx (and model.int8.onnx) into ``out_dir``; return every figure for the model card."""
    import torch

    from client.inference.engines import OrtEngine, TorchEngine
    from shared_models.export.int8 import quantize_int8, quantized_operators
    from shared_models.export.onnx_export import export_onnx, metadata, preprocessing_for

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    fp32_path = export_onnx(run.model, run.name, run.task, out_dir / FP32_FILE)
    prepare = preprocessing_for(fp32_path)
    weights = run.run_dir / "global_model.pt"
    torch_probs, torch_row = measure(TorchEngine(run.model), test, weights.stat().st_size)
    ort_fp32 = OrtEngine(fp32_path, threads=1, prepare=prepare)
    fp32_probs, fp32_row = measure(ort_fp32, test, fp32_path.stat().st_size)
    logits_t = _logits(TorchEngine(run.model), test)
    logits_o = _logits(ort_fp32, test)
    result = {"model": run.name, "task": run.task, "test_inputs": test.source, "n_test": len(test),
              "preprocessing_outside_graph": f"{metadata(fp32_path)['fedemo.preprocessing']} (PyTorch)" if prepare else "",
              "fp32_max_abs_difference": float(np.abs(logits_t - logits_o).max()),
              "fp32_difference_of": "log-softmax outputs (the logits less each input's log-sum-exp)",
              "forms": {"pytorch_fp32": torch_row, "onnxruntime_fp32": fp32_row},
              "files": {"fp32": str(fp32_path)}}
    if int8:
        if calibration is None:
            raise ValueError("int8 export needs a calibration set")
        batches = [prepare(b) if prepare else b for b in calibration.batches(16)]  # the graph's own inputs
        int8_path = quantize_int8(fp32_path, out_dir / INT8_FILE, batches)
        _, int8_row = measure(OrtEngine(int8_path, threads=1, prepare=prepare), test, int8_path.stat().st_size)
        result["forms"]["onnxruntime_int8"] = int8_row
        result["files"]["int8"] = str(int8_path)
        result["calibration"] = {"source": calibration.source, "n": len(calibration)}
        result["int8_operators"] = quantized_operators(int8_path)
        result["int8_groups_losing_over_2_points"] = group_drops(fp32_row, int8_row)
    return result


def _logits(engine, data: InputSet) -> np.ndarray:
    """Log-probabilities (softmax is monotone; differences of logits up to a constant per row)."""
    probs = np.concatenate([engine.run(b)[0] for b in data.batches(256)])
    return np.log(np.clip(probs, 1e-30, None))
