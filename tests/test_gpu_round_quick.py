"""benchmarks/gpu_round.py --quick: the GPU benchmark's CPU form runs every variant and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
@pytest.mark.mpi
def test_gpu_round_quick_runs_every_variant():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_round.py", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("fedavg ", "ours "))]
    variants = {(r[0], int(r[1]), int(r[2])) for r in rows}
    expected = {(m, 1, g) for m in ("fedavg", "ours") for g in (1, 2, 4)} | {(m, k, 1) for m in ("fedavg", "ours") for k in (2, 4)}
    assert variants == expected
    for r in rows:
        assert float(r[3]) > 0 and float(r[-2]) > 0  # seconds per round; the round changed the global vector
        assert float(r[-1]) < 1e-5  # batched and multi-rank rounds agree with one client at a time
