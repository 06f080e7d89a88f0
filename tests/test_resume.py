"""Resuming from the per-round checkpoint gives the same run, bit for bit, as not stopping."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import TINY_RUN, run_launch
from test_end_to_end import _same
from test_failures import FAULT

from fedmpi.analyze import load_run

SETTINGS = [*TINY_RUN, "strategy.name=head_pruning", "strategy.sparsity=0.5", "server.selection=loss"]


def _launch(tmp_path, name, *extra, ranks=None):
    proc = run_launch([*SETTINGS, f"output.dir={tmp_path}", f"output.name={name}", *extra], ranks=ranks)
    return proc


def test_extending_a_finished_run_equals_running_longer(tmp_path):
    assert _launch(tmp_path, "whole", "server.num_rounds=3").returncode == 0
    assert _launch(tmp_path, "parts", "server.num_rounds=1").returncode == 0
    proc = _launch(tmp_path, "parts", "server.num_rounds=3", "output.resume=true")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout
    _same(tmp_path / "whole.h5", tmp_path / "parts.h5")
    with h5py.File(tmp_path / "parts.h5") as f:
        assert f.attrs["status"] == "complete" and f["checkpoint"].attrs["round"] == 3


@pytest.mark.mpi
def test_resume_after_a_failure_on_another_rank_count(tmp_path, monkeypatch):
    assert _launch(tmp_path, "whole", "server.num_rounds=3").returncode == 0
    (tmp_path / "sitecustomize.py").write_text(FAULT)  # rank 1 fails in round 2
    with monkeypatch.context() as m:
        m.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        failed = _launch(tmp_path, "broken", "server.num_rounds=3", ranks=2)
    assert failed.returncode != 0
    assert load_run(tmp_path / "broken.h5").attrs["status"] == "failed"
    proc = _launch(tmp_path, "broken", "server.num_rounds=3", "output.resume=true")  # one process now
    assert proc.returncode == 0, proc.stderr
    _same(tmp_path / "whole.h5", tmp_path / "broken.h5")
    assert np.array_equal(load_run(tmp_path / "broken.h5").rounds["round"], [0, 1, 2, 3])


def test_resume_refuses_a_different_experiment(tmp_path):
    assert _launch(tmp_path, "run", "server.num_rounds=1").returncode == 0
    proc = _launch(tmp_path, "run", "server.num_rounds=2", "output.resume=true", "client.lr=0.1")
    assert proc.returncode != 0 and "config differs from the run being resumed in client.lr" in proc.stderr
    assert load_run(tmp_path / "run.h5").complete  # untouched


def test_resume_without_a_checkpoint_starts_the_run(tmp_path):
    proc = _launch(tmp_path, "fresh", "server.num_rounds=1", "output.resume=true")
    assert proc.returncode == 0 and "nothing to resume" in proc.stdout
    assert load_run(tmp_path / "fresh.h5").complete
