#!/usr/bin/env bash
# The GPU path, proven on a machine with CUDA: the engine benchmark, face50 (as configured, and with vectorised
# clients: issue 27's >= 70% utilisation target for face_cnn) and face50_dp (as configured, and with vectorised
# clients' batched DP step) for a few rounds on the GPU. Prints,
# per step: wall clock, GPU utilisation (mean and peak, sampled from nvidia-smi twice a second while the step
# runs), CUDA memory per worker and whether every simulated node shared one CUDA context
# (simulations/benchmarks/gpu_report.py reads the samples back). On a machine without CUDA it stops at once,
# in one line, with exit status 3.
# Usage: simulations/benchmarks/gpu_check.sh [ROUNDS]   (default 3)
#   STEPS="engine face50 face50_vectorised face50_dp face50_dp_vectorised" (default: all; a subset reruns some)
#   OUT=folder (default runs/gpu-check-<time>; every step's log, the sampler CSVs and the runs go there)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ROUNDS=${1:-3}
STEPS=${STEPS:-engine face50 face50_vectorised face50_dp face50_dp_vectorised}
"$PY" -m simulations.benchmarks.gpu_report preflight  # exit 3 in one line without CUDA
OUT=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
rm -f "$OUT/gpu.csv" "$OUT/compute_apps.csv" "$OUT/steps.csv"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

# The sampler: every GPU's utilisation and memory, and the processes holding a CUDA context, with the time.
( set +e +o pipefail
  while true; do
    t=$(date +%s.%N)
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null \
      | sed "s/^/$t, /" >> "$OUT/gpu.csv"
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null \
      | sed "s/^/$t, /" >> "$OUT/compute_apps.csv"
    sleep 0.5
  done ) &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

step() {  # step NAME SUMMARY_FILE COMMAND...: runs it, keeps its log, marks its window in steps.csv
  local name=$1 summary=$2 rc=0; shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local start; start=$(date +%s.%N)
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  tail -n 15 "$OUT/$name.log"
  echo "$name,$start,$(date +%s.%N),$rc,$summary" >> "$OUT/steps.csv"
}

simulate() {  # simulate NAME CONFIG [--set KEY=VALUE ...]: a few rounds of a config on the GPU
  local name=$1 config=$2; shift 2
  step "$name" "$OUT/runs/$name/summary.json" "$PY" -m simulations.cli simulate "configs/$config.toml" \
    --set device=cuda --set num-server-rounds="$ROUNDS" --set runs-dir="$OUT/runs" --set run-name="$name" "$@"
}

step engine "$OUT/engine/benchmark.json" "$PY" -m simulations.benchmarks.simulation_engine --clients 50 \
  --rounds "$((ROUNDS + 1))" --model face_cnn voice_stats --out "$OUT/engine"
simulate face50 face50
simulate face50_vectorised face50 --set vectorised-clients=true  # face_cnn: in VECTORISABLE_MODELS
simulate face50_dp face50_dp
simulate face50_dp_vectorised face50_dp --set vectorised-clients=true  # in VECTORISABLE_DP_MODELS
kill $SAMPLER 2>/dev/null || true
wait $SAMPLER 2>/dev/null || true
echo
echo "== GPU check ($ROUNDS rounds; files in $OUT)"
"$PY" -m simulations.benchmarks.gpu_report report "$OUT" | tee "$OUT/report.txt"
