"""The coordinator's checkpoint: everything needed to continue a run after its last completed round.

Flower's ``Strategy.start`` always begins at round 1 and keeps its state in
memory, so a killed coordinator loses the run. After every round the round
loop writes ``checkpoint.npz`` into the run folder, atomically
(shared_models/atomic_files.py: a crash leaves the previous checkpoint or the
new one, never half of one):

- the global weights after the round;
- the server optimiser's state (FedAvgM's momentum vector), without which a
  resumed FedAvgM run would take different steps;
- the round number;
- the state of Python's ``random``, which Flower samples clients with;
- the metrics.jsonl entries so far (a line written after the checkpoint is
  dropped on resume, as its round is run again) and the nodes' latest DP
  reports;
- with client-level DP (central-dp), the accountant's releases so far and
  the clipping norm the next round starts from (server/central_dp.py
  ``CentralDP.state``). Releases made after the checkpoint, in the round
  the coordinator died in, are in the run folder's release journal
  (``central_dp_releases.json``): a resumed run counts them too.

One ``.npz`` (arrays plus a JSON document), read back with
``allow_pickle=False``: a checkpoint cannot execute code when it is loaded.
Nodes' privacy ledgers are not here: they live with each node and keep every
spend, including a round trained before a crash and run again after it.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from shared_models.atomic_files import atomic_write_bytes
from shared_models.config_error import ConfigError

CHECKPOINT_FILE = "checkpoint.npz"


class CheckpointError(ConfigError):
    """A run folder that cannot be resumed (``resume`` names it), with the reason."""


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
        payload: dict[str, np.ndarray] = {f"global/{name}": array.numpy() for name, array in self.arrays.items()}
        for key, arrays in self.server_state.items():
            payload.update({f"state/{key}/{i}": np.asarray(a) for i, a in enumerate(arrays)})
        version, internal, gauss = self.rng_state if self.rng_state is not None else random.getstate()
        meta = {"round": self.server_round, "names": list(self.arrays.keys()),
                "state_keys": {k: len(v) for k, v in self.server_state.items()},
                "rng_state": [version, list(internal), gauss], "history": self.history, "privacy": self.privacy,
                "central": self.central}
        payload["meta"] = np.asarray(json.dumps(meta))
        buffer = io.BytesIO()
        np.savez(buffer, **payload)
        path = Path(run_dir) / CHECKPOINT_FILE
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, run_dir: Path) -> "Checkpoint":
        path = Path(run_dir) / CHECKPOINT_FILE
        if not path.is_file():
            raise CheckpointError(f"{run_dir} holds no {CHECKPOINT_FILE}: it never completed a round, "
                                  "or it is not a FedEmo run folder")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = ArrayRecord({name: Array(data[f"global/{name}"]) for name in meta["names"]})
                state = {k: [data[f"state/{k}/{i}"] for i in range(n)] for k, n in meta["state_keys"].items()}
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path} is unreadable: {err}") from err
        version, internal, gauss = meta["rng_state"]
        return cls(server_round=int(meta["round"]), arrays=arrays, server_state=state,
                   rng_state=(version, tuple(internal), gauss), history=meta["history"],
                   privacy=meta.get("privacy", {}), central=meta.get("central") or {})
