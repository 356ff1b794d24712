"""``fedemo export RUN_DIR --format onnx [--int8] [--calibration DIR]``: ONNX files and a signed model card.

Lives in simulations/ because it joins three sides: the hospital-side
exporter and measurements (``client.inference.export``), the synthetic data
that calibrates int8 by default (``simulations.synthetic``), and the
coordinator's key that signs the card (``server.report.model_card``). A
``--calibration DIR`` folder is read where the command runs and only its
description goes into the card.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

CALIBRATION_SEED = 20_251_206  # not a training seed: calibration faces differ from the training rows
CALIBRATION_SIZE = 128


def add_export_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("export", help="the run's model as ONNX (fp32, --int8 quantised) with a signed "
                                           "model_card.json")
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format)")
    p.add_argument("--int8", action="store_true", help="also a static int8 model (QDQ, per-channel weights)")
    p.add_argument("--calibration", type=Path, metavar="DIR",
                   help="int8 calibration folder of face images or clips (default: synthetic data)")
    p.add_argument("--out", type=Path, help="folder for the ONNX files (default RUN_DIR/export)")
    p.add_argument("--test-limit", type=int, default=1000, help="test inputs used for accuracy and latency")
    p.set_defaults(func=export_command)


def synthetic_inputs(task: str, n: int = CALIBRATION_SIZE, seed: int = CALIBRATION_SEED):
    """Synthetic faces and/or clips (written as files and read back like a hospital's) as an InputSet."""
    import numpy as np

    from client.inference.predict import read_clip_features
    from client.inference.test_data import InputSet
    from shared_models.preprocessing.faces import face_batch
    from simulations.synthetic.synth_faces import generate_faces

    inputs, labels, groups = [], None, {}
    if task in ("face", "fusion"):
        faces = generate_faces(n, seed)
        inputs.append(face_batch(faces.faces))
        if task == "face":  # labelled, with demographic groups: accuracy per group without the run's data
            labels, groups = faces.labels, {a: np.asarray(v, dtype=object) for a, v in faces.demographics.items()}
    if task in ("voice", "fusion"):
        from simulations.synthetic.synth_voices import write_cremad

        with tempfile.TemporaryDirectory() as tmp:
            write_cremad(Path(tmp), n, seed, n_actors=8)
            clips = [read_clip_features(str(p)) for p in sorted((Path(tmp) / "AudioWAV").glob("*.wav"))][:n]
        inputs += [np.concatenate([c[0] for c in clips]), np.concatenate([c[1] for c in clips])]
        if task == "fusion":
            inputs[0] = inputs[0][:len(clips)]
    return InputSet(tuple(inputs), labels, groups, source=f"synthetic {('faces' if task == 'face' else 'clips' if task == 'voice' else 'faces and clips')} "
                                          f"(FedEmo generator, seed {seed}, {len(inputs[0])} inputs)")


def export_command(args: argparse.Namespace) -> int:
    from client.inference.export import export_run
    from client.inference.run_model import load_run_model
    from client.inference.test_data import folder_inputs, run_test_set
    from server.report.model_card import build_card, write_card
    from server.tools.commands import run_key

    run = load_run_model(args.run)
    if not (args.run / "report.json").is_file():
        print(f"fedemo: error: {args.run}: no report.json: the model card states the signed report's training facts",
              file=sys.stderr)
        return 2
    test = run_test_set(args.run, limit=args.test_limit) or synthetic_inputs(run.task, seed=CALIBRATION_SEED + 1)
    calibration = None
    if args.int8:
        calibration = folder_inputs(args.calibration, run.task) if args.calibration else synthetic_inputs(run.task)
    result = export_run(run, args.out or args.run / "export", int8=args.int8, calibration=calibration, test=test)
    key = run_key(args.run, create=False)
    card_path = write_card(args.run, build_card(args.run, result), key)
    for form, row in result["forms"].items():
        acc = f", accuracy {row['accuracy']:.3f}" if "accuracy" in row else ""
        print(f"{form}: {row['size_bytes'] / 1024:.0f} KiB, p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms "
              f"(batch 1, one thread), {row['throughput_per_s']:.0f}/s{acc}")
    print(f"ONNX fp32 vs PyTorch: max abs difference {result['fp32_max_abs_difference']:.2e} on {result['n_test']} "
          f"{result['test_inputs']}")
    for drop in result.get("int8_groups_losing_over_2_points", []):
        print(f"  int8 loses more than 2 points on {drop}")
    for form, path in result["files"].items():
        print(f"Wrote {path}")
    print(f"Wrote {card_path}" + (" (signed with the run's key; `fedemo verify` checks it)" if key else
                                  " UNSIGNED: the coordinator's key is not on this machine"))
    return 0
