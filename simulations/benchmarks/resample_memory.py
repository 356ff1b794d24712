"""Benchmark: peak memory of decoding one clip to 16 kHz, per source sample rate.

    python -m simulations.benchmarks.resample_memory [--seconds 30] [--rates 8000 44101 ...] [--limit-mb 2048] [--json]

Each rate runs in a fresh subprocess that writes a tone clip at that rate, decodes it as a node does
(``read_waveform``) and reports the peak resident set and its rise, under an address-space cap so a runaway
resampler kernel fails in its own process. Figures, not tests (results: docs/data.md, "Resampling").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_RATES = (8000, 22050, 44100, 44101, 48000, 96000, 383999, 384000)

# The child: write the clip, baseline RSS, cap the address space, decode, report. Runs with -c so that nothing
# of the parent's memory is inherited.
_CHILD = r"""
import json, resource, sys
import numpy as np, soundfile as sf
rate, seconds, limit_mb, path = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = np.arange(int(rate * seconds)) / rate
sf.write(path, (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), rate, subtype="PCM_16")
del t
import torch
torch.set_num_threads(1)
from shared_models.audio_features import SAMPLE_RATE, read_waveform, resample
try:
    from shared_models.audio_features import resample_ratio
    ratio = resample_ratio(rate, SAMPLE_RATE)
    ratio = f"{ratio.numerator}/{ratio.denominator}"
except ImportError:  # an older checkout: torchaudio's gcd-reduced ratio
    import math
    ratio = f"{rate // math.gcd(rate, SAMPLE_RATE)}/{SAMPLE_RATE // math.gcd(rate, SAMPLE_RATE)}"
resample(np.zeros(1000, np.float32), 3, 1)  # load torch's kernels before the baseline
def vm_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
base_rss = vm_kib("VmRSS:")
try:  # reset the high-water mark to now (Linux >= 4.0), so the peak below is the decode's
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
if limit_mb > 0:
    cap = (vm_kib("VmSize:") + limit_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
result = {"rate": rate, "ratio": ratio, "baseline_mb": base_rss / 1024}
try:
    wave = read_waveform(path)
    result.update(ok=True, samples=int(wave.size))
except BaseException as err:
    wave = None
    result.update(ok=False, error=f"{type(err).__name__}: {str(err)[:200]}")
# The decode's peak, before the check below. VmHWM, not ru_maxrss: Linux folds the parent's peak into a child's
# ru_maxrss across fork and exec, so under a large parent (a long pytest run) ru_maxrss read the parent's 3.4 GB.
peak = vm_kib("VmHWM:")
result.update(peak_mb=peak / 1024, rise_mb=(peak - base_rss) / 1024)
if wave is not None:  # where the 440 Hz tone landed (a power-of-two FFT: cheap in memory)
    spectrum = np.abs(np.fft.rfft(wave, n=1 << 20))
    result["tone_hz"] = float(np.argmax(spectrum) * SAMPLE_RATE / (1 << 20))
print(json.dumps(result))
"""


def measure(rate: int, seconds: float = 30.0, limit_mb: int = 2048) -> dict:
    """Peak RSS (MB) of decoding a ``seconds`` clip at ``rate`` to 16 kHz, in a fresh process."""
    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / f"tone_{rate}.wav"
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(rate), str(seconds), str(limit_mb), str(clip)],
                              capture_output=True, text=True, env=env, cwd=repo, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"rate": rate, "ok": False, "error": f"child exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    from client.data.loaders.audio_files import MAX_SAMPLE_RATE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (30 s: the longest decoded)")
    parser.add_argument("--rates", type=int, nargs="+", default=None)
    parser.add_argument("--limit-mb", type=int, default=2048, help="address-space cap above baseline (0: none)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rates = args.rates or sorted(set(DEFAULT_RATES) | {MAX_SAMPLE_RATE})
    results = [measure(rate, args.seconds, args.limit_mb) for rate in rates]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"Decoding a {args.seconds:g} s clip to 16 kHz, one process per rate (peak RSS, rise over the baseline):")
    print(f"{'rate Hz':>9}  {'ratio used':>11}  {'peak MB':>8}  {'rise MB':>8}  result")
    for r in results:
        outcome = (f"{r['samples']} samples, tone at {r['tone_hz']:.1f} Hz" if r.get("ok")
                   else f"failed: {r.get('error')}")
        print(f"{r['rate']:>9}  {r.get('ratio', '?'):>11}  {r.get('peak_mb', float('nan')):>8.0f}  "
              f"{r.get('rise_mb', float('nan')):>8.0f}  {outcome}")
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
