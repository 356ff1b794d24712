#!/usr/bin/env bash
# The GPU path, proven on a machine with CUDA: the engine benchmark, face50 and face50_dp for a few rounds on
# the GPU, with wall clock, GPU utilisation, CUDA memory per worker and whether every simulated node shared one
# CUDA context (one process on the GPU). Usage: simulations/benchmarks/gpu_check.sh [ROUNDS]  (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ROUNDS=${1:-3}
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this check needs one'; \
print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

# which processes hold a CUDA context, sampled twice a second while the runs go on
( while true; do nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits \
    | sed "s/^/$(date +%s.%N), /" >> "$OUT/compute_apps.csv" 2>/dev/null || true; sleep 0.5; done ) &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

run() {  # run NAME COMMAND...: wall clock and exit status per step
  local name=$1; shift
  local start=$(date +%s%N)
  echo "== $name: $*"
  "$@" 2>&1 | tail -n 25
  local end=$(date +%s%N)
  echo "$name wall clock $(( (end - start) / 1000000 )) ms" | tee -a "$OUT/wall_clock.txt"
}

run engine "$PY" -m simulations.benchmarks.simulation_engine --clients 50 --rounds 4 --out "$OUT/engine"
for config in face50 face50_dp; do
  run "$config" "$PY" -m simulations.cli simulate "configs/$config.toml" --set device=cuda \
      --set num-server-rounds="$ROUNDS" --set runs-dir="$OUT/runs" --set run-name="$config"
  "$PY" - "$OUT/runs/$config/summary.json" <<'PYEOF'
import json, sys
engine = json.load(open(sys.argv[1])).get("engine", {})
print("engine:", json.dumps({k: engine.get(k) for k in ("backend", "workers", "peak_cuda_mib", "gpu")}))
PYEOF
done
kill $SAMPLER 2>/dev/null || true
"$PY" - "$OUT/compute_apps.csv" <<'PYEOF'
import collections, sys
pids = collections.defaultdict(float)
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 3 and parts[1].isdigit():
        pids[parts[1]] = max(pids[parts[1]], float(parts[2] or 0))
print(f"processes that held a CUDA context: {len(pids)} (peak MiB each: {dict(pids)})")
print("single CUDA context per simulation: the local backend uses one worker on a GPU; each run above should add "
      "one pid (engine benchmark: one per backend it times)")
PYEOF
cat "$OUT/wall_clock.txt"
