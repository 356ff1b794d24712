"""GPU utilisation and memory while a simulation runs, from ``nvidia-smi`` (no extra dependency).

torch reports the memory its own allocator peaked at (each worker sends it
when it stops: simulations/engine/local_backend.py); how busy the GPU was is only
known to the driver, so a thread samples ``nvidia-smi`` twice a second. The
figures go to summary.json's ``engine`` and the final console line, so a
researcher sees whether 50 virtual nodes kept one GPU busy or starved it.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


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
            rows = [line.split(",") for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
            if rows:
                self.samples.append(max((float(u), float(m)) for u, m in rows))

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
