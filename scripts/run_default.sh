#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the main job on the embedded default under
# 4 MPI ranks. Extra arguments are passed on as config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mpiexec -n 4 python -m fedmpi.launch "$@"
