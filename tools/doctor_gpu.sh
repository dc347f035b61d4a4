#!/usr/bin/env bash
# Run the full `muratune doctor` (synthetic data) on a machine with a GPU, installing nothing.
#
#   OUT=/some/folder tools/doctor_gpu.sh [extra doctor options, e.g. --quick or --config configs/mura-wide.yaml]
#
# Writes $OUT/doctor.json (every check), $OUT/doctor.log (the table and progress) and $OUT/nvidia-smi.csv.
# Uses the Python on PATH (or $PYTHON) with muratune's dependencies already installed; this tree goes first on
# PYTHONPATH, so Ray's workers import the same code. Exits with the doctor's code (0 ok, 1 a check failed).
set -euo pipefail

OUT=${OUT:-$(mktemp -d)}
PYTHON=${PYTHON:-python}
SCRATCH=${TMPDIR:-/tmp}/muratune-doctor-gpu
cd "$(dirname "$0")/.."
mkdir -p "$OUT" "$SCRATCH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MURATUNE_CACHE="$SCRATCH/cache" NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())" \
    | tee "$OUT/doctor.log"

started=$(date +%s)
set +e
"$PYTHON" -m muratune.cli doctor --set "storage=$SCRATCH/runs" --out "$OUT/doctor.json" "$@" 2>&1 | tee -a "$OUT/doctor.log"
code=${PIPESTATUS[0]}
set -e
echo "doctor exit code $code, wall $(($(date +%s) - started)) s" | tee -a "$OUT/doctor.log"
exit "$code"
