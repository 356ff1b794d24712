"""GPU utilisation and memory while a simulation runs, from ``nvidia-smi`` (no extra dependency).

torch reports the memory its own allocator peaked at (each worker sends it
when it stops: simulations/engine/local_backend.py); how busy the GPU was is only
known to the driver, so a thread samples ``nvidia-smi`` twice a second. The
figures go to summary.json's ``engine`` and the final console line, so a
researcher sees whether 50 virtual nodes kept one GPU busy or starved it. A field nvidia-smi cannot
fill (``[N/A]`` for a MIG slice's utilisation, ``[Not Supported]``) is no figure: that GPU's row is left out.
The prepared GPU check (simulations/benchmarks/gpu_check.sh) samples per step with the same parsing.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


def number(field: str) -> float | None:
    """One CSV field of nvidia-smi (``--format=csv,nounits``) as a number; None for ``[N/A]`` and the like."""
    try:
        return float(field.strip())
    except ValueError:
        return None


def busiest_gpu(text: str) -> tuple[float, float] | None:
    """QUERY's answer (one ``utilisation, memory`` line per GPU) -> the busiest GPU's pair; None if none is known."""
    rows = [tuple(number(f) for f in line.split(",")) for line in text.splitlines() if line.strip()]
    known = [row for row in rows if len(row) == 2 and None not in row]
    return max(known) if known else None  # type: ignore[return-value,type-var]


class GpuSampler:
    """Samples every visible GPU's utilisation (%) and used memory (MiB) until stopped."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (utilisation, memory) of the busiest GPU per sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                out = subprocess.run(QUERY, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            busiest = busiest_gpu(out.stdout) if out.returncode == 0 else None
            if busiest is not None:
                self.samples.append(busiest)

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, float]:
        """Mean and peak utilisation and the most memory used; empty if nothing was sampled."""
        if not self.samples:
            return {}
        utils = [u for u, _ in self.samples]
        return {"gpu_util_mean_pct": round(sum(utils) / len(utils), 1), "gpu_util_max_pct": max(utils),
                "gpu_memory_used_max_mib": max(m for _, m in self.samples), "gpu_samples": len(self.samples)}


def check_cuda_here(device: str, backend: str) -> None:
    """The local backend runs every node on this machine: a CUDA device it lacks stops the run at start, in one line.

    Under Ray the nodes may run on other machines of a cluster (their GPUs, not this one's), so only
    ``simulation-backend = "local"`` is checked; the nodes' own ``resolve_device`` stays the last word.
    """
    if backend != "local" or not device.startswith("cuda"):
        return
    import torch

    from shared_models.config_error import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(f"run-config device = {device!r}: CUDA is not available on this machine (torch "
                          f"{torch.__version__} sees no GPU) and the local backend runs every node here; use "
                          "device = \"auto\" or \"cpu\"")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ConfigError(f"run-config device = {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), numbered from 0")
