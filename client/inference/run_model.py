"""Load a finished run's model for inference: its config says the model, its task and its heads.

A run folder holds ``config.json`` (the resolved run config) and
``global_model.pt`` (the final weights); nothing else is needed to predict.
Loading refuses, in one line, a folder that is not a finished run and an
input whose kind the run's task cannot take.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared_models.config_error import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
KINDS_OF_TASK = {"face": ("image", "video"), "voice": ("clip",), "fusion": ("image+clip",)}


@dataclass
class RunModel:
    """A run's final model, in eval mode, with what prediction needs to know about it."""

    run_dir: Path
    name: str
    task: str
    valence_arousal: bool
    model: Any  # torch.nn.Module
    config: dict


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.json (pass a finished run's folder, e.g. runs/<run-id>)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable run config ({err})") from None


def load_run_model(run_dir: Path | str, device: str = "cpu") -> RunModel:
    """The run's model with its final weights (``global_model.pt``), on ``device``, in eval mode."""
    import torch

    from shared_models.models.registry import build_model, model_task

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    # Only the keys that shape the network: a run folder written before later settings existed still loads.
    run_config = config.get("run_config") or {}
    name, va = str(run_config.get("model", "")), bool(run_config.get("valence-arousal", False))
    try:
        task = model_task(name)
    except ValueError as err:
        raise ConfigError(f"{run_dir / 'config.json'}: {err}") from None
    weights = run_dir / "global_model.pt"
    if not weights.is_file():
        raise ConfigError(f"{run_dir}: no global_model.pt (the run did not finish a round)")
    model = build_model(name, valence_arousal=va)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.to(device).eval()
    return RunModel(run_dir, name, task, va, model, config)


def describe_run(run_dir: Path | str, onnx_path: Path) -> RunModel:
    """The run as an exported ONNX file serves it, without loading PyTorch (``model`` is None): the file's
    metadata must name the run's model, or the file belongs to another run."""
    from shared_models.export.onnx_export import metadata

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    run_config = config.get("run_config") or {}
    name = str(run_config.get("model", ""))
    meta = metadata(onnx_path)
    if meta.get("fedemo.model") != name:
        raise ConfigError(f"{onnx_path}: exported from model {meta.get('fedemo.model')!r}, but run {run_dir.name} "
                          f"trained {name!r} (export this run with `fedemo export {run_dir}`)")
    return RunModel(run_dir, name, meta.get("fedemo.task", ""), bool(run_config.get("valence-arousal", False)),
                    None, config)


def input_kind(path: str) -> str | None:
    """"image", "video", "clip", "image+clip" (a fusion pair ``FACE+CLIP``) or None from the file name."""
    if "+" in path and not Path(path).exists():
        face, _, clip = path.partition("+")
        if input_kind(face) == "image" and input_kind(clip) == "clip":
            return "image+clip"
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in AUDIO_SUFFIXES:
        return "clip"
    return None


def check_task(run: RunModel, path: str, kind: str) -> None:
    """Refuse an input the run's task cannot take, naming the file, the model and why."""
    if kind not in KINDS_OF_TASK[run.task]:
        takes = " or ".join(KINDS_OF_TASK[run.task])
        why = {"fusion": "a fusion model needs a face and a voice clip of the same moment: pass FACE.png+CLIP.wav"}
        raise ConfigError(f"{path}: a {kind}, but model {run.name} of run {run.run_dir.name} was trained for task "
                          f"{run.task!r} and takes {takes} inputs" + (f" ({why[run.task]})" if run.task in why else ""))
