"""The GPU check's figures (simulations/benchmarks/gpu_check.sh): its preflight, and what each step used.

The script samples ``nvidia-smi`` twice a second while its steps run (``gpu.csv``: the GPUs' utilisation and
memory; ``compute_apps.csv``: the processes holding a CUDA context) and marks each step's start, end and exit
status in ``steps.csv``. ``report`` reads them back and prints, per step: wall clock, mean and peak utilisation
(over the step, and over the span the GPU was busy, which leaves out start-up and data preparation), the most
GPU memory used, torch's peak per worker (summary.json's ``engine``) and whether every simulated node shared one
CUDA context. ``preflight`` stops the script in one line on a machine without CUDA.
Usage: ``python -m simulations.benchmarks.gpu_report preflight | report OUT``.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from simulations.engine.gpu_usage import number  # [N/A] fields (MIG slices) are no figure

NO_CUDA_EXIT = 3  # the script's exit status where there is nothing to check
UTILISATION_TARGET_PCT = {"face50_vectorised": 70.0}  # issue 27: face_cnn's 50 clients in one context at >= 70%


class NoCuda(RuntimeError):
    """This machine cannot run the GPU check (the message says why, in one line)."""


def preflight() -> str:
    """The device the check will use, in one line; ``NoCuda`` where there is none (or nvidia-smi is missing)."""
    import torch

    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise NoCuda(f"no CUDA device: torch {torch.__version__} ({build}) sees no GPU; run this check on a "
                     "machine with an NVIDIA GPU")
    if shutil.which("nvidia-smi") is None:
        raise NoCuda("nvidia-smi not found on PATH: GPU utilisation cannot be sampled without it")
    return (f"device: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible) | torch "
            f"{torch.__version__} | CUDA {torch.version.cuda}")


@dataclass(frozen=True)
class GpuSample:
    time: float
    index: int
    utilisation: float | None  # %
    memory_mib: float | None


@dataclass(frozen=True)
class AppSample:
    time: float
    pid: int
    memory_mib: float | None


@dataclass(frozen=True)
class Step:
    name: str
    start: float
    end: float
    status: int
    summary: str  # the step's summary.json or benchmark.json ("" if none)


def _rows(text: str, width: int) -> list[list[str]]:
    rows = [[field.strip() for field in line.split(",")] for line in text.splitlines() if line.strip()]
    return [row for row in rows if len(row) == width]


def parse_gpu_csv(text: str) -> list[GpuSample]:
    """``time, index, utilization.gpu, memory.used`` lines (nounits); lines cut short by a kill are skipped."""
    out = []
    for t, index, util, memory in _rows(text, 4):
        if number(t) is not None and index.isdigit():
            out.append(GpuSample(float(t), int(index), number(util), number(memory)))
    return out


def parse_apps_csv(text: str) -> list[AppSample]:
    """``time, pid, used_memory`` lines: one per process holding a CUDA context at that sample."""
    return [AppSample(float(t), int(pid), number(memory)) for t, pid, memory in _rows(text, 3)
            if number(t) is not None and pid.isdigit()]


def parse_steps_csv(text: str) -> list[Step]:
    """``name, start, end, exit status, summary path`` lines, as the script writes them."""
    return [Step(name, float(start), float(end), int(status), summary)
            for name, start, end, status, summary in _rows(text, 5)]


def utilisation(samples: list[GpuSample]) -> dict[str, float]:
    """Mean and peak utilisation of the busiest GPU per sample time, over all samples and over the busy span."""
    busiest: dict[float, float] = {}
    memory = [s.memory_mib for s in samples if s.memory_mib is not None]
    for s in samples:
        if s.utilisation is not None:
            busiest[s.time] = max(busiest.get(s.time, 0.0), s.utilisation)
    figures: dict[str, float] = {"samples": len({s.time for s in samples})}
    if memory:
        figures["memory_used_max_mib"] = max(memory)
    series = [busiest[t] for t in sorted(busiest)]
    if series:
        figures.update(util_mean_pct=round(sum(series) / len(series), 1), util_max_pct=max(series))
        busy = [i for i, u in enumerate(series) if u > 0]
        if busy:
            span = series[busy[0]:busy[-1] + 1]
            figures["util_busy_mean_pct"] = round(sum(span) / len(span), 1)
    return figures


def contexts(apps: list[AppSample]) -> dict[int, float]:
    """Every process seen holding a CUDA context, with the most GPU memory it held (0 where unknown)."""
    seen: dict[int, float] = {}
    for a in apps:
        seen[a.pid] = max(seen.get(a.pid, 0.0), a.memory_mib or 0.0)
    return seen


def _pid_list(pids: dict[int, float], shown: int = 4) -> str:
    listed = ", ".join(f"pid {p} {m:.0f} MiB" for p, m in sorted(pids.items())[:shown])
    return listed + (f" and {len(pids) - shown} more" if len(pids) > shown else "")


def context_check(pids: dict[int, float], engine: dict) -> str:
    """Whether the step's simulated nodes shared one CUDA context, from nvidia-smi or else torch's per-worker peaks."""
    clients = engine.get("num_supernodes", "the")
    torch_peaks = engine.get("peak_cuda_mib") or []
    if pids:
        count, source = len(pids), "nvidia-smi: " + _pid_list(pids)
    elif torch_peaks:  # a container's PID namespace often hides the processes from nvidia-smi
        count, source = len(torch_peaks), "torch: workers that allocated CUDA memory (nvidia-smi listed no process)"
    else:
        return "single CUDA context: unknown (nvidia-smi listed no process and no worker reported CUDA memory)"
    verdict = f"yes, all {clients} clients in one process" if count == 1 else f"no, {count} processes"
    return f"single CUDA context: {verdict} ({source})"


def _engine(summary_path: str) -> dict:
    """A simulate step's summary.json ``engine`` (with the node count), or {} if it has none."""
    path = Path(summary_path) if summary_path else None
    if path is None or not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {**summary.get("engine", {}), "num_supernodes": summary.get("num_supernodes")} if "engine" in summary else {}


def _benchmark_lines(path: Path) -> list[str]:
    """The engine benchmark's backends (its benchmark.json): warm round, GPU figures and torch's peak."""
    lines = []
    for model, r in json.loads(path.read_text()).get("models", {}).items():
        for backend in r.get("backends", []):
            b = r[backend]
            gpu, engine = b.get("engine", {}).get("gpu", {}), b.get("engine", {})
            line = f"    {model} {backend}: {b.get('warm_round_s', '?')} s per warm round"
            if gpu:
                line += f", utilisation mean {gpu['gpu_util_mean_pct']}% (peak {gpu['gpu_util_max_pct']}%)"
            if engine.get("peak_cuda_mib"):
                line += f", torch peak per worker {engine['peak_cuda_mib']} MiB"
            lines.append(line)
        for peer in ("vectorised", "pfl"):
            if "warm_round_s" in r.get(peer, {}):
                lines.append(f"    {model} {peer} (one process): {r[peer]['warm_round_s']} s per warm round")
    return lines


def step_lines(step: Step, gpu: list[GpuSample], apps: list[AppSample]) -> list[str]:
    """The report's lines for one step."""
    within = [s for s in gpu if step.start <= s.time <= step.end]
    figures = utilisation(within)
    status = "" if step.status == 0 else f"  FAILED (exit status {step.status}; see {step.name}.log)"
    lines = [f"{step.name}: wall clock {step.end - step.start:.1f} s{status}"]
    if "util_mean_pct" in figures:
        line = (f"  GPU utilisation: mean {figures['util_mean_pct']}% over the step, "
                f"{figures.get('util_busy_mean_pct', 0.0)}% while busy; peak {figures['util_max_pct']}% "
                f"({figures['samples']} samples)")
        target = UTILISATION_TARGET_PCT.get(step.name)
        if target is not None:
            met = figures.get("util_busy_mean_pct", 0.0) >= target
            line += f"; target {target:.0f}% while busy: {'met' if met else 'NOT met'}"
        lines.append(line)
    else:
        lines.append(f"  GPU utilisation: not sampled ({figures['samples']} samples)")
    if "memory_used_max_mib" in figures:
        lines.append(f"  GPU memory used at most: {figures['memory_used_max_mib']:.0f} MiB (all processes)")
    engine = _engine(step.summary)
    if engine:
        peaks = engine.get("peak_cuda_mib")
        lines.append(f"  CUDA memory per worker (torch's peak): {peaks if peaks else 'none reported'}; "
                     f"{engine.get('workers', '?')} worker(s), backend {engine.get('backend', '?')}")
    pids = contexts([a for a in apps if step.start <= a.time <= step.end])
    if engine:
        lines.append("  " + context_check(pids, engine))
    elif pids:
        lines.append(f"  processes with a CUDA context: {len(pids)} ({_pid_list(pids)})")
    if step.summary and Path(step.summary).is_file() and step.summary.endswith("benchmark.json"):
        lines.extend(_benchmark_lines(Path(step.summary)))
    return lines


def report(out: Path) -> list[str]:
    """Every step's lines from the sampler files in ``out``."""
    def read(name: str) -> str:
        path = out / name
        return path.read_text(errors="replace") if path.is_file() else ""

    steps = parse_steps_csv(read("steps.csv"))
    if not steps:
        return [f"no steps recorded in {out / 'steps.csv'}"]
    gpu, apps = parse_gpu_csv(read("gpu.csv")), parse_apps_csv(read("compute_apps.csv"))
    return [line for step in steps for line in step_lines(step, gpu, apps)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["preflight"] and len(args) == 1:
        try:
            print(preflight())
        except NoCuda as err:
            print(f"gpu_check: {err}", file=sys.stderr)
            return NO_CUDA_EXIT
        return 0
    if args[:1] == ["report"] and len(args) == 2:
        print("\n".join(report(Path(args[1]))))
        return 0
    print("usage: python -m simulations.benchmarks.gpu_report preflight | report OUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
