#!/usr/bin/env bash
# The GPU path checked and timed in one run of under 5 minutes, for a short rental of a GPU machine:
#   bash benchmarks/gpu_check.sh            # creates .venv if needed (make install), then runs
# Prints one markdown table (benchmarks/gpu_check.py says what each row measures).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make install
.venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run this on a GPU machine")'
export OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python benchmarks/gpu_check.py "$@"
