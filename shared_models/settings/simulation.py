"""Where the work runs: simulated nodes, their CPU/GPU shares, the local or Ray backend, the device."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

SIMULATION_BACKENDS = ("local", "ray")
# Models whose local training vectorised clients reproduce (simulations/engine/vectorised_clients.py): no dropout
# by default (under vmap each client's dropout draws differ from its own training's) and no batch statistics.
VECTORISABLE_MODELS = ("face_cnn", "face_scatter", "face_scatter_lcn", "face_scatter_lcn_blur", "voice_stats",
                       "voice_stats_norm")
# Under dp = true: models whose every trained layer book-keeping clips (each node's DP optimizer is book-keeping's)
# and whose per-sample gradients the batched DP step computes exactly (no dropout, no batch statistics).
VECTORISABLE_DP_MODELS = VECTORISABLE_MODELS


@dataclass(frozen=True)
class SimulationSettings:
    num_supernodes: int
    client_num_cpus: float
    client_num_gpus: float
    simulation_backend: str  # fedemo simulate only: local | ray (simulations/engine/local_backend.py)
    simulation_workers: int
    ray_address: str  # ray backend: an existing Ray cluster's head (host:port); "" = RAY_ADDRESS or a local Ray
    device: str
    client_threads: int
    vectorised_clients: bool  # local backend: a worker trains its nodes' train messages of a round as one batch

    def check(self) -> None:
        need(self, self.num_supernodes >= 1, "num-supernodes", "must be >= 1")
        need(self, self.client_num_cpus > 0, "client-num-cpus", "must be > 0")
        need(self, 0 <= self.client_num_gpus <= 1, "client-num-gpus", "must be in [0, 1]")
        need(self, self.simulation_backend in SIMULATION_BACKENDS, "simulation-backend", "choose local or ray")
        need(self, not self.ray_address or self.simulation_backend == "ray", "ray-address",
             "only with simulation-backend = \"ray\" (the local backend runs on this machine)")
        need(self, not self.ray_address or (":" in self.ray_address and " " not in self.ray_address), "ray-address",
             "give the Ray head's host:port (the address `ray start --head` prints), or \"\"")
        need(self, self.simulation_workers >= 0, "simulation-workers", "must be >= 0 (0: automatic)")
        need(self, self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "choose auto, cpu or cuda[:N]")
        need(self, self.client_threads >= 1, "client-threads", "must be >= 1")
        if self.vectorised_clients:
            need(self, self.simulation_backend == "local", "vectorised-clients",
                 "only with simulation-backend = \"local\" (its workers group their nodes' train messages)")
            model = self.model  # type: ignore[attr-defined]  # TrainingSettings' key
            dp = self.dp  # type: ignore[attr-defined]  # DPSettings' key
            need(self, not dp or model in VECTORISABLE_DP_MODELS, "vectorised-clients",
                 f"not with dp = true for model {model!r}: the batched DP step (simulations/engine/vectorised_dp.py) "
                 f"clips per client and per sample exactly only for {', '.join(VECTORISABLE_DP_MODELS)} (set "
                 "vectorised-clients = false)")
            need(self, model in VECTORISABLE_MODELS, "vectorised-clients",
                 f"model {model!r} is not supported (its dropout draws would differ from each node's own "
                 f"training); supported: {', '.join(VECTORISABLE_MODELS)}")
