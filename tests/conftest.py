"""Shared test helpers: where the real data lives, and how to run fedmpi in this process or under mpiexec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A small, fast federation on a tiny BERT: used by the end-to-end tests.
TINY_RUN = [
    "model.name=tiny-bert",
    "data.num_train=240",
    "data.num_eval=64",
    "data.max_length=32",
    "data.num_clients=12",
    "server.num_clients_per_round=5",
    "server.num_rounds=2",
    "server.eval_batch_size=16",
    "client.batch_size=8",
    "client.lr=0.005",
    "runtime.num_threads=1",
]


def mpiexec() -> str:
    """The mpiexec next to this Python (the PyPI mpich wheel), else one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec: pip install mpich (or load your cluster's MPI)")
    return found


def run_launch(args: list[str], *, ranks: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m fedmpi.launch args`` in a subprocess, under ``mpiexec -n ranks`` if given."""
    cmd = [sys.executable, "-m", "fedmpi.launch", *args]
    if ranks is not None:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_here(args: list[str], *, progress: bool = False) -> Path:
    """The one-process run of ``python -m fedmpi.launch args``, in this process: the result file's path.

    The same loop as the launcher's (fedmpi.simulation.run on the single-process comm), without a
    fresh interpreter importing torch again; for tests that compare results, not the launcher's
    messages or exit codes. ``progress``: print the run's console lines (to this process's stdout,
    for capsys). Restores the thread count and determinism the run sets.
    """
    import torch

    from fedmpi.comm import LocalComm
    from fedmpi.config import load_config
    from fedmpi.progress import Progress
    from fedmpi.simulation import run

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return run(load_config(None, args), LocalComm(), Progress(enabled=progress))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def load_experiment(name: str):
    """experiments/<name>.py as a module (the scripts import their siblings, e.g. sweep, by name)."""
    import importlib.util

    sys.path.insert(0, str(REPO / "experiments"))
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module
