"""benchmarks/gpu_round.py --quick: the GPU benchmark's CPU form runs every variant and exits 0.

The driver runs in this process (torch is loaded here already); its 1-, 2- and 4-rank workers
are subprocesses, as on a GPU.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
@pytest.mark.mpi
def test_gpu_round_quick_runs_every_variant(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_round", REPO / "benchmarks" / "gpu_round.py")
    gpu_round = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_round)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["gpu_round.py", "--quick"])
    code = gpu_round.main()
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith(("fedavg ", "ours "))]
    variants = {(r[0], int(r[1]), int(r[2])) for r in rows}
    expected = {(m, 1, g) for m in ("fedavg", "ours") for g in (1, 2, 4)} | {(m, k, 1) for m in ("fedavg", "ours") for k in (2, 4)}
    assert variants == expected
    for r in rows:
        assert float(r[3]) > 0 and float(r[-2]) > 0  # seconds per round; the round changed the global vector
        assert float(r[-1]) < 1e-5  # batched and multi-rank rounds agree with one client at a time
