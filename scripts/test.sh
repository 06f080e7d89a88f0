#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), start a single-node Slurm for tests/test_slurm.py where
# we can (root with apt-get; FEDMPI_SLURM=0 skips it), and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${FEDMPI_SLURM:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! bash scripts/slurm_single_node.sh > .slurm-setup.log 2>&1; then
    echo "scripts/test.sh: Slurm could not be started (see .slurm-setup.log); tests/test_slurm.py will be skipped" >&2
  fi
fi
. .venv/bin/activate
python -m pytest "$@"
