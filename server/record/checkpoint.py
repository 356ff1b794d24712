"""The coordinator's checkpoint: everything needed to continue a run after its last completed round.

Written atomically after every round (``checkpoint.npz``): global weights, the server optimiser's state,
the round, Python's ``random`` state (Flower samples clients with it), metrics so far and the nodes' DP
reports, and central DP's accountant state. Read with ``allow_pickle=False``; an untrustworthy file
(truncated, CRC mismatch, non-finite or mis-shaped weights) is a one-line ``CheckpointError``, and a
non-finite model is never saved (``NonFiniteWeights``). Nodes' ledgers stay with the nodes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from shared_models.atomic_files import atomic_write_bytes, finite_or_null
from shared_models.config_error import ConfigError

CHECKPOINT_FILE = "checkpoint.npz"
ROUND_CHECKPOINTS = "checkpoints"  # round-NNNN.npz: every round's checkpoint, to roll back to (--from-round)
DIGEST_TAG = b"\nfedemo-sha256:"  # after the .npz: the SHA-256 of every byte before it (a flipped byte anywhere)
DIGEST_LEN = len(DIGEST_TAG) + 64


class CheckpointError(ConfigError):
    """A run folder that cannot be resumed (``resume`` names it), with the reason."""


class NonFiniteWeights(RuntimeError):
    """An aggregation produced NaN or infinite global weights: the run stops, naming the round and arrays."""


def weights_problem(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]] | None = None) -> str | None:
    """Why these global weights cannot be used (arrays missing or extra, a wrong shape, non-finite values), or None.

    ``shapes``: the model's own {name: shape} (server/server_app.py knows the model); None checks values only.
    """
    if shapes is not None:
        if missing := sorted(set(shapes) - set(arrays)):
            return f"it lacks the model's array(s) {', '.join(missing[:3])}"
        if extra := sorted(set(arrays) - set(shapes)):
            return f"it holds array(s) the model does not have: {', '.join(extra[:3])}"
        for name, shape in shapes.items():
            if tuple(arrays[name].shape) != tuple(shape):
                return f"array {name} has shape {tuple(arrays[name].shape)}, the model's is {tuple(shape)}"
    bad = {name: int(a.size - np.isfinite(a).sum()) for name, a in arrays.items()
           if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()}
    if bad:
        listed = ", ".join(f"{name} ({n} values)" for name, n in list(bad.items())[:3])
        return f"non-finite (NaN or infinite) weights in {listed}"
    return None


def model_shapes(state_dict: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a torch state dict, to check a checkpoint's arrays against."""
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def check_checkpoint_fits(checkpoint: "Checkpoint", state_dict: dict[str, Any], run_dir: Path) -> None:
    """Refuse a checkpoint whose weights are not the run's model's (a model changed, a file swapped)."""
    problem = weights_problem({n: a.numpy() for n, a in checkpoint.arrays.items()}, model_shapes(state_dict))
    if problem:
        raise CheckpointError(f"{Path(run_dir) / CHECKPOINT_FILE} does not fit the run's model: {problem}")


@dataclass
class Checkpoint:
    server_round: int
    arrays: ArrayRecord
    server_state: dict[str, list[np.ndarray]] = field(default_factory=dict)
    rng_state: Any = None  # random.getstate()
    history: list[dict] = field(default_factory=list)
    privacy: dict[str, dict] = field(default_factory=dict)
    central: dict[str, Any] = field(default_factory=dict)  # CentralDP.state(); empty without client-level DP

    def save(self, run_dir: Path) -> Path:
        """Write checkpoint.npz atomically; NonFiniteWeights (nothing written) if the weights are not finite."""
        payload: dict[str, np.ndarray] = {f"global/{name}": array.numpy() for name, array in self.arrays.items()}
        problem = weights_problem({name[len("global/"):]: a for name, a in payload.items()})
        if problem:  # the previous checkpoint stays: the last finite model is what a resume would continue from
            raise NonFiniteWeights(f"round {self.server_round}'s aggregation produced {problem}; the run stops "
                                   f"without signing that model (the last checkpoint is round "
                                   f"{self.server_round - 1}'s)")
        for key, arrays in self.server_state.items():
            payload.update({f"state/{key}/{i}": np.asarray(a) for i, a in enumerate(arrays)})
        version, internal, gauss = self.rng_state if self.rng_state is not None else random.getstate()
        meta = {"round": self.server_round, "names": list(self.arrays.keys()),
                "state_keys": {k: len(v) for k, v in self.server_state.items()},
                "rng_state": [version, list(internal), gauss], "history": self.history, "privacy": self.privacy,
                "central": self.central}
        payload["meta"] = np.asarray(json.dumps(finite_or_null(meta)[0], allow_nan=False))
        buffer = io.BytesIO()
        np.savez(buffer, **payload)
        path = Path(run_dir) / CHECKPOINT_FILE
        body = buffer.getvalue()
        atomic_write_bytes(path, body + DIGEST_TAG + hashlib.sha256(body).hexdigest().encode("ascii"))
        keep_round_copy(path, self.server_round)
        return path

    @classmethod
    def load(cls, run_dir: Path) -> "Checkpoint":
        path = Path(run_dir) / CHECKPOINT_FILE
        if not path.is_file():
            raise CheckpointError(f"{run_dir} holds no {CHECKPOINT_FILE}: it never completed a round, "
                                  "or it is not a FedEmo run folder")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty (0 bytes): the run cannot resume from it; start the run again")
        try:
            body = _verified_body(path.read_bytes())
            with zipfile.ZipFile(io.BytesIO(body)) as archive:  # every member's CRC-32 (older, digest-less files)
                if (damaged := archive.testzip()) is not None:
                    raise ValueError(f"member {damaged} fails its CRC-32 check")
            with np.load(io.BytesIO(body), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[f"global/{name}"] for name in meta["names"]}
                state = {k: [data[f"state/{k}/{i}"] for i in range(n)] for k, n in meta["state_keys"].items()}
            version, internal, gauss = meta["rng_state"]
            checkpoint = cls(server_round=int(meta["round"]), arrays=ArrayRecord({n: Array(a) for n, a in arrays.items()}),
                             server_state=state, rng_state=(version, tuple(internal), gauss),
                             history=list(meta["history"]), privacy=meta.get("privacy", {}),
                             central=meta.get("central") or {})
        except Exception as err:  # noqa: BLE001 - whatever a damaged file raises (zip, npy, JSON, a missing key)
            raise CheckpointError(f"{path} is damaged and cannot be read ({_one_line(err)}); the run cannot "
                                  "resume from it: restore the file from a backup or start the run again") from None
        problem = weights_problem(arrays)
        if problem:
            raise CheckpointError(f"{path} holds {problem}: the run cannot resume from it; start the run again")
        return checkpoint


def keep_round_copy(path: Path, server_round: int) -> Path | None:
    """Keep ``path`` (just written) as ``checkpoints/round-NNNN.npz`` too: a hard link, so no second write.

    The next save replaces checkpoint.npz by a new file, leaving this one as it was. A run can then go back to
    any round it kept, e.g. to retrain without records whose consent was since withdrawn (docs/data.md).
    """
    keep = path.parent / ROUND_CHECKPOINTS / f"round-{server_round:04d}.npz"
    try:
        keep.parent.mkdir(exist_ok=True)
        keep.unlink(missing_ok=True)
        try:
            os.link(path, keep)
        except OSError:  # a file system without hard links
            atomic_write_bytes(keep, path.read_bytes())
    except OSError:  # best effort (a full disk): the run's own checkpoint is written; this round is not kept
        return None
    return keep


def roll_back(run_dir: Path, server_round: int) -> Path:
    """Make round ``server_round``'s kept checkpoint the run's checkpoint, so ``--resume`` continues from it."""
    kept = Path(run_dir) / ROUND_CHECKPOINTS / f"round-{int(server_round):04d}.npz"
    if not kept.is_file():
        rounds = sorted(int(p.stem.split("-")[1]) for p in kept.parent.glob("round-*.npz"))
        raise CheckpointError(f"{run_dir} kept no checkpoint of round {server_round} (kept: "
                              f"{', '.join(map(str, rounds)) or 'none'}); resume from one of those")
    atomic_write_bytes(Path(run_dir) / CHECKPOINT_FILE, kept.read_bytes())
    return kept


def _verified_body(raw: bytes) -> bytes:
    """The .npz bytes, once the SHA-256 after them matches (a file written before the digest: as it is)."""
    tail = raw[-DIGEST_LEN:]
    if not tail.startswith(DIGEST_TAG):
        if all(c in b"0123456789abcdef" for c in raw[-64:]) or DIGEST_TAG in raw[-2 * DIGEST_LEN:]:
            raise ValueError("its SHA-256 trailer is damaged")  # a .npz never ends in 64 hex digits
        return raw
    body = raw[:-DIGEST_LEN]
    if hashlib.sha256(body).hexdigest().encode("ascii") != tail[len(DIGEST_TAG):]:
        raise ValueError("its content does not match its SHA-256 (changed or damaged since it was written)")
    return body


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "no detail"
    return f"{type(err).__name__}: {text[:200]}"
