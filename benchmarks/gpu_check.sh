#!/usr/bin/env bash
# GPU readiness of gpt2-zoo in one run (< 8 minutes on one GPU): for torch, TF and Flax in turn,
# fp32/bf16 parity with the transformers 4.57.6 golden outputs, generate (greedy, penalties,
# beam, seeded sampling) on the device, every attention implementation the framework offers,
# and decode / prefill speed against transformers on the same GPU. See benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                       # all three, output in benchmarks/results/
#   bash benchmarks/gpu_check.sh --frameworks torch    # one framework
#   GPT2_ZOO_HF_PYTHON=/path/python bash benchmarks/gpu_check.sh   # with the transformers rows
#   bash benchmarks/gpu_check.sh --device cpu --quick  # dry run of the script on a CPU
#
# PYTHON (default .venv/bin/python, else python3) must have the framework's GPU build:
# torch with CUDA, tensorflow[and-cuda], jax[cuda12]. Each framework runs in its own process
# under its own time limit (GPU_CHECK_LIMIT_S, default 150 s), so one hang cannot eat the run.
# Exit status: 0 when every check passed, 1 otherwise. The last line per framework is JSON.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
FRAMEWORKS=torch,tf,flax
OUT=${GPU_CHECK_OUT:-benchmarks/results}
LIMIT=${GPU_CHECK_LIMIT_S:-150}
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --frameworks) FRAMEWORKS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
mkdir -p "$OUT"
LOG="$OUT/gpu_check_$(date -u +%Y%m%dT%H%M%SZ).txt"
export TF_CPP_MIN_LOG_LEVEL=2 TF_FORCE_GPU_ALLOW_GROWTH=true XLA_PYTHON_CLIENT_PREALLOCATE=false
{ echo "# gpu_check $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null)"; nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"; } | tee "$LOG"
status=0
for fw in ${FRAMEWORKS//,/ }; do
  start=$(date +%s)
  timeout "$LIMIT" "$PY" benchmarks/gpu_check.py --framework "$fw" ${ARGS[@]+"${ARGS[@]}"} 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "[$fw] FAIL time limit: killed after ${LIMIT} s" | tee -a "$LOG"
  [ "$rc" != 0 ] && status=1
  echo "[$fw] exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
done
echo "gpu_check: $([ $status = 0 ] && echo all checks passed || echo SOME CHECKS FAILED); log $LOG" | tee -a "$LOG"
exit $status
