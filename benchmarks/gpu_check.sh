#!/usr/bin/env bash
# GPU check of the trainer (issue 12), in at most 8 minutes on one GPU:
#   1. the trainer tests that make sense on a GPU (layouts, log-probs, losses, TRL agreement,
#      reference precision): pytest tests/dpop -k "$TESTS";
#   2. benchmarks/gpu_check.py: bf16 training of a ~1.1B Llama from a config (random weights) with
#      stored references, ours (each packing) against TRL's DPOTrainer on the same batches: tokens/s,
#      MFU, peak GPU memory, the reference pass's tokens/s, and the check that the first step's
#      chosen log-ratio is 0 (reference dtype = policy dtype).
#
#   bash benchmarks/gpu_check.sh                 # on a machine with a CUDA GPU (a CUDA torch in .venv)
#   bash benchmarks/gpu_check.sh --cpu-smoke     # anywhere: a tiny model on CPU, the same code path
#   bash benchmarks/gpu_check.sh --skip-tests …  # the training part only; other arguments go to gpu_check.py
#
# Writes gpu_check.json (gpu_check_cpu_smoke.json) to $OUT, else benchmarks/results/, and prints a
# table. Exit status: 0 when the tests pass and the log-ratio check holds, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TESTS="packing or logps or losses or trl or precision"

run_tests=1
args=()
for arg in "$@"; do
  if [[ "$arg" == "--skip-tests" ]]; then run_tests=0; else args+=("$arg"); fi
done

status=0
if [[ $run_tests == 1 ]]; then
  echo "== trainer tests: pytest tests/dpop -k \"$TESTS\""
  timeout 200 "$PYTHON" -m pytest -q -p no:cacheprovider tests/dpop -k "$TESTS" || status=1
fi
echo "== training: ours (each packing) against TRL's DPOTrainer"
# tqdm bars of TRL's precompute and of weight loading would drown the table
TQDM_DISABLE=1 timeout 270 "$PYTHON" benchmarks/gpu_check.py "${args[@]}" || status=1
exit $status
