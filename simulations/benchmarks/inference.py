"""Benchmark: each model as PyTorch fp32, ONNX Runtime fp32 and int8, and the whole face video pipeline.

    python -m simulations.benchmarks.inference [--models face_cnn ...] [--run RUN_DIR ...] [--out FILE]

Per model: size, batch-1 latency (p50, p95) and throughput on one thread, accuracy overall and per group
(face_cnn trained by configs/quickstart.toml first; other families untrained unless ``--run``). Video:
640x480 through ``fedemo predict``'s pipeline on one core. Voice: a 3 s clip after load. Figures go to the
console and JSON (default simulations/benchmarks/results/inference.json).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

FAMILIES = ["face_cnn", "face_resnet", "face_scatter", "voice_crnn", "voice_stats", "fusion"]
VIDEO_FRAMES = 300


def one_thread() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def train_face_cnn(root: Path) -> Path:
    from simulations.cli import main as fedemo

    runs = root / "runs"
    assert fedemo(["simulate", "configs/quickstart.toml", "--set", f"data-dir={root / 'fer'}",
                   "--set", f"runs-dir={runs}", "--set", f"signing-key={root / 'key.pem'}"]) == 0
    return next(runs.iterdir())


def seeded_run(root: Path, name: str) -> Path:
    """A run folder with seeded, untrained weights of ``name`` (size and speed only)."""
    import torch

    from shared_models.models.registry import MODELS, build_model

    folder = root / f"untrained-{name}"
    folder.mkdir(parents=True)
    va = MODELS[name].supports_valence_arousal
    (folder / "config.json").write_text(json.dumps({"run_config": {"model": name, "valence-arousal": va}}))
    torch.manual_seed(0)
    torch.save(build_model(name, valence_arousal=va).state_dict(), folder / "global_model.pt")
    return folder


def bench_model(name: str, run_dir: Path, out_dir: Path, trained: bool) -> dict:
    from client.inference.export import export_run
    from client.inference.run_model import load_run_model
    from client.inference.test_data import run_test_set
    from simulations.export_command import CALIBRATION_SEED, synthetic_inputs

    run = load_run_model(run_dir)
    test = (run_test_set(run_dir, limit=1000) if trained else None) or synthetic_inputs(run.task, n=256,
                                                                                        seed=CALIBRATION_SEED + 1)
    result = export_run(run, out_dir / name, int8=True, calibration=synthetic_inputs(run.task), test=test)
    result["trained"] = trained
    return result


def write_video(path: Path, frames: int = VIDEO_FRAMES) -> Path:
    import cv2

    from simulations.synthetic.synth_faces import generate_faces

    face = generate_faces(1, 7, size=160).faces[0]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for i in range(frames):
        canvas = np.full((480, 640), 128, np.uint8)
        x = 120 + int(200 * (0.5 + 0.5 * np.sin(i / 30)))
        canvas[120:280, x:x + 160] = face
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def bench_video(run_dir: Path, int8_path: Path, video: Path) -> dict:
    import cv2

    from client.inference.engines import OrtEngine, TorchEngine
    from client.inference.predict import predict_file
    from client.inference.run_model import load_run_model

    out = {}
    capture, start, n = cv2.VideoCapture(str(video)), time.perf_counter(), 0
    while capture.read()[0]:
        n += 1
    out["decode_only_fps"] = n / (time.perf_counter() - start)
    for label, engine in (("pytorch_fp32", TorchEngine(load_run_model(run_dir).model)),
                          ("onnxruntime_int8", OrtEngine(int8_path, threads=1))):
        for detect_every in (1, 5):
            start = time.perf_counter()
            records = list(predict_file(engine, "face", str(video), "video", crop="detect", every=1,
                                        detect_every=detect_every))
            seconds = time.perf_counter() - start
            found = sum(1 for r in records if r.get("error") is None)
            out[f"{label}_detect_every_{detect_every}"] = {"fps": len(records) / seconds, "frames": len(records),
                                                           "frames_with_face": found}
    return out


def bench_voice_clip(run_dirs: dict[str, Path], root: Path) -> dict:
    import soundfile as sf

    from client.inference.engines import TorchEngine
    from client.inference.predict import read_clip_features
    from client.inference.run_model import load_run_model
    from simulations.synthetic.synth_voices import write_cremad

    write_cremad(root / "clips", 8, seed=5, n_actors=2)
    wave, rate = sf.read(sorted((root / "clips" / "AudioWAV").glob("*.wav"))[0], dtype="float32")
    clip = root / "three_seconds.wav"
    sf.write(clip, np.resize(wave, 3 * rate), rate)
    out = {}
    for name in ("voice_crnn", "voice_stats"):
        engine = TorchEngine(load_run_model(run_dirs[name]).model)
        times = []
        for i in range(30):
            start = time.perf_counter()
            engine.run(read_clip_features(str(clip)))
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
        out[name] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}
    return out


def table(results: dict) -> str:
    lines = ["| model | form | size KiB | p50 ms | p95 ms | inputs/s | accuracy | worst group change vs fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["models"].items():
        fp32 = r["forms"]["onnxruntime_fp32"]
        for form, row in r["forms"].items():
            acc = f"{row['accuracy']:.3f}" if r["trained"] and "accuracy" in row else "untrained"
            worst = ""
            if r["trained"] and row.get("groups") and form != "onnxruntime_fp32":
                worst = f"{min(row['groups'][a][g]['accuracy'] - fp32['groups'][a][g]['accuracy'] for a in row['groups'] for g in row['groups'][a]):+.3f}"
            lines.append(f"| {name} | {form} | {row['size_bytes'] / 1024:.0f} | {row['p50_ms']:.2f} | "
                         f"{row['p95_ms']:.2f} | {row['throughput_per_s']:.0f} | {acc} | {worst} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--run", nargs="*", type=Path, default=[], help="trained run folders to use instead")
    parser.add_argument("--out", type=Path, default=Path("simulations/benchmarks/results/inference.json"))
    args = parser.parse_args(argv)
    one_thread()
    from client.inference.run_model import load_run_model

    results = {"machine": {"cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0], "threads": 1},
               "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        given = {load_run_model(r).name: r for r in args.run}
        if "face_cnn" in args.models and "face_cnn" not in given:
            given["face_cnn"] = train_face_cnn(root)
            one_thread()
        run_dirs = {}
        for name in args.models:
            run_dirs[name] = given.get(name) or seeded_run(root, name)
            start = time.perf_counter()
            try:
                results["models"][name] = bench_model(name, run_dirs[name], root / "export", name in given)
            except Exception as err:  # one family failing to export is a figure too
                results.setdefault("failed", {})[name] = f"{type(err).__name__}: {err}"[:500]
            print(f"{name}: measured in {time.perf_counter() - start:.0f} s", flush=True)
        if "face_cnn" in run_dirs:
            results["video_640x480"] = bench_video(run_dirs["face_cnn"], root / "export" / "face_cnn" /
                                                   "model.int8.onnx", write_video(root / "video.avi"))
        if {"voice_crnn", "voice_stats"} <= set(run_dirs):
            results["voice_3s_clip_ms"] = bench_voice_clip(run_dirs, root)
    results["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    print(table(results))
    print(json.dumps({k: v for k, v in results.items() if k != "models"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
