"""Resuming from the per-round checkpoint gives the same run, bit for bit, as not stopping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import REPO, TINY_RUN, run_here, run_launch
from test_end_to_end import _same
from test_failures import FAULT

from fedmpi.analyze import ResultFileError, load_run

SETTINGS = [*TINY_RUN, "strategy.name=head_pruning", "strategy.sparsity=0.5", "server.selection=loss"]


def _launch(tmp_path, name, *extra, ranks=None):
    proc = run_launch([*SETTINGS, f"output.dir={tmp_path}", f"output.name={name}", *extra], ranks=ranks)
    return proc


def _here(tmp_path, name, *extra, progress=False):
    """The same run in this process (conftest.run_here): where the launcher's own messages are not the point."""
    return run_here([*SETTINGS, f"output.dir={tmp_path}", f"output.name={name}", *extra], progress=progress)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The 3-round run without a stop, in this process, once: what every resumed run must equal."""
    out = tmp_path_factory.mktemp("whole")
    return run_here([*SETTINGS, "server.num_rounds=3", f"output.dir={out}", "output.name=whole"])


@pytest.mark.slow
def test_extending_a_finished_run_equals_running_longer(tmp_path, whole):
    _here(tmp_path, "parts", "server.num_rounds=1")
    proc = _launch(tmp_path, "parts", "server.num_rounds=3", "output.resume=true")  # the launcher resumes it
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout
    _same(whole, tmp_path / "parts.h5")
    with h5py.File(tmp_path / "parts.h5") as f:
        assert f.attrs["status"] == "complete" and f.attrs["num_ranks"] == 1
        assert list(f.attrs["resumed_num_ranks"]) == [1] and len(f.attrs["resumed_at"]) == 1
    with h5py.File(tmp_path / "parts.ckpt.h5") as f:
        assert f.attrs["round"] == 3


@pytest.mark.mpi
def test_resume_after_a_failure_on_another_rank_count(tmp_path, monkeypatch, whole):
    (tmp_path / "sitecustomize.py").write_text(FAULT)  # rank 1 fails in round 2
    with monkeypatch.context() as m:
        m.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        failed = _launch(tmp_path, "broken", "server.num_rounds=3", ranks=2)
    assert failed.returncode != 0
    assert load_run(tmp_path / "broken.h5").attrs["status"] == "failed"
    _here(tmp_path, "broken", "server.num_rounds=3", "output.resume=true")  # one process now
    _same(whole, tmp_path / "broken.h5")
    broken = load_run(tmp_path / "broken.h5")
    assert broken.attrs["num_ranks"] == 2 and list(broken.attrs["resumed_num_ranks"]) == [1]  # the first run's ranks kept
    assert np.array_equal(load_run(tmp_path / "broken.h5").rounds["round"], [0, 1, 2, 3])


@pytest.mark.slow
def test_resume_refuses_a_different_experiment(tmp_path):
    run_here([*SETTINGS, "server.num_rounds=1", f"output.dir={tmp_path}", "output.name=run"])
    proc = _launch(tmp_path, "run", "server.num_rounds=2", "output.resume=true", "client.lr=0.1")
    assert proc.returncode != 0 and "config differs from the run being resumed in client.lr" in proc.stderr
    assert load_run(tmp_path / "run.h5").complete  # untouched


def test_resume_without_a_checkpoint_starts_the_run(tmp_path, capsys):
    _here(tmp_path, "fresh", "server.num_rounds=1", "output.resume=true", progress=True)
    assert "nothing to resume" in capsys.readouterr().out
    assert load_run(tmp_path / "fresh.h5").complete


# Kills the process (kill -9) half-way through writing the checkpoint after round 2.
KILL_IN_CHECKPOINT = """
import os, signal
import fedmpi.results as r
original = r.write_checkpoint
def dying(path, state):
    if state.round == 2:
        with open(path, "wb") as f:
            f.write(b"\\x89HDF half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, state)
r.write_checkpoint = dying
"""


@pytest.mark.slow
def test_kill_during_the_checkpoint_write_leaves_a_resumable_run(tmp_path, monkeypatch, capsys, whole):
    (tmp_path / "sitecustomize.py").write_text(KILL_IN_CHECKPOINT)
    with monkeypatch.context() as m:
        m.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        killed = _launch(tmp_path, "killed", "server.num_rounds=3")
    assert killed.returncode == -9
    with h5py.File(tmp_path / "killed.ckpt.h5") as f:  # the previous checkpoint, intact
        assert f.attrs["round"] == 1
    assert list(load_run(tmp_path / "killed.h5").rounds["round"]) == [0, 1, 2]  # round 2's rows were written
    _here(tmp_path, "killed", "server.num_rounds=3", "output.resume=true", progress=True)
    out = capsys.readouterr().out
    assert "resuming" in out and "after round 1" in out
    _same(whole, tmp_path / "killed.h5")


@pytest.mark.slow
def test_sigterm_marks_the_file_failed_and_a_reader_can_follow_the_run(tmp_path):
    cmd = [sys.executable, "-m", "fedmpi.launch", *SETTINGS, "server.num_rounds=50", f"output.dir={tmp_path}",
           "output.name=followed"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = []
        deadline = time.monotonic() + 240
        while len(seen) < 2 and time.monotonic() < deadline:  # another process reads the running job's file
            time.sleep(0.2)
            try:
                rounds = list(load_run(tmp_path / "followed.h5").rounds["round"])
            except ResultFileError:  # not created yet, or caught mid-write
                continue
            if rounds and (not seen or rounds[-1] != seen[-1]):
                seen.append(rounds[-1])
        assert len(seen) == 2 and seen[1] > seen[0], seen
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert err.strip().splitlines() == [
        "fedmpi: stopped by SIGTERM; the result file says failed and can be resumed (output.resume=true)"], err
    run = load_run(tmp_path / "followed.h5")
    assert run.attrs["status"] == "failed" and "SIGTERM" in run.attrs["error"]
    assert not (tmp_path / "followed.h5.lock").exists()
