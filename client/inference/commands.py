"""``fedemo predict``: argument parsing and the command (imports only the standard library at module level)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_predict_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="the run's model on images, clips, videos or folders: one JSON line "
                                            "(or CSV row) per input or video frame")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a finished run's folder (config.json, global_model.pt)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image, clip, video, folder, or FACE+CLIP for a fusion model")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="output: JSON lines (default) or CSV")
    p.add_argument("--out", type=Path, help="write the records to this file instead of standard output")
    p.add_argument("--crop", choices=("detect", "whole"), default="detect",
                   help="find the face with OpenCV's detector (default), or take the whole picture as the face "
                        "(files that are already face crops, like FER2013's)")
    p.add_argument("--every", type=int, default=1, help="videos: classify every n-th frame (default 1)")
    p.add_argument("--detect-every", type=int, default=5,
                   help="videos: run the face detector on every n-th classified frame, carrying the box between "
                        "(default 5)")
    p.add_argument("--onnx", type=Path, help="run this exported model (model.onnx or model.int8.onnx) in ONNX "
                                             "Runtime instead of global_model.pt in PyTorch")
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu (default) or cuda")
    p.set_defaults(func=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    from client.inference.engines import OrtEngine, TorchEngine
    from client.inference.output import RecordWriter
    from client.inference.predict import Tally, predict_paths
    from client.inference.run_model import load_run_model

    if args.onnx is not None:  # ONNX Runtime only: PyTorch is not even imported for a face model
        from shared_models.export.onnx_export import preprocessing_for
        from client.inference.run_model import describe_run

        run = describe_run(args.run, args.onnx)
        engine = OrtEngine(args.onnx, threads=0, prepare=preprocessing_for(args.onnx))
    else:
        run = load_run_model(args.run, device=args.device)
        engine = TorchEngine(run.model, args.device)
    stream = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout
    tally = Tally()
    try:
        writer = RecordWriter(stream, args.format)
        for record in predict_paths(run, engine, args.inputs, crop=args.crop, every=args.every,
                                    detect_every=args.detect_every):
            tally.count(record)
            writer.write(record)
    finally:
        if args.out:
            stream.close()
    errors = sum(tally.errors.values())
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(tally.errors.items()))
    print(f"fedemo predict: {tally.predictions} prediction(s), {errors} error(s)" + (f" ({detail})" if detail else ""),
          file=sys.stderr)
    return 0 if tally.predictions or not errors else 1
