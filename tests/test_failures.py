"""Failures end the whole job quickly with one clear message; nothing written is lost."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import TINY_RUN, run_launch

from fedmpi.analyze import load_run

pytestmark = pytest.mark.mpi

# Loaded through PYTHONPATH by every rank: makes rank 1 fail while training in round 2.
FAULT = """
import os
if os.environ.get("PMI_RANK") == "1":
    import fedmpi.worker as w
    original = w.Worker.train_group
    def failing(self, clients, params, on_device, round_, message=None):
        if round_ == 2:
            raise RuntimeError("injected failure on purpose")
        return original(self, clients, params, on_device, round_, message)
    w.Worker.train_group = failing
"""


def test_config_error_under_mpi_is_reported_once(tmp_path):
    start = time.monotonic()
    proc = run_launch(["server.num_rounds=0"], ranks=2, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("server.num_rounds") == 1, proc.stderr
    assert time.monotonic() - start < 60


def test_missing_data_file_fails_on_every_rank_with_one_message(tmp_path):
    args = [*TINY_RUN, "data.source=jsonl", f"data.train_file={tmp_path}/nope.jsonl", f"data.eval_file={tmp_path}/nope.jsonl"]
    proc = run_launch([*args, f"output.dir={tmp_path}"], ranks=2, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("setup failed on ranks 0,1") == 1, proc.stderr
    assert "nope.jsonl" in proc.stderr


def test_one_failing_rank_ends_the_job_and_keeps_the_results(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(FAULT)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    args = [*TINY_RUN, "server.num_rounds=3", f"output.dir={tmp_path}", "output.name=failing"]
    start = time.monotonic()
    proc = run_launch(args, ranks=2, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count("RuntimeError: injected failure on purpose") == 1, proc.stderr
    assert "training failed on rank 1" in proc.stderr
    assert time.monotonic() - start < 120
    run = load_run(tmp_path / "failing.h5")
    assert run.attrs["status"] == "failed" and not run.complete
    assert list(run.rounds["round"]) == [0, 1]  # rounds already written survive


def test_existing_result_file_is_not_overwritten(tmp_path):
    (tmp_path / "taken.h5").write_bytes(b"precious")
    proc = run_launch([*TINY_RUN, f"output.dir={tmp_path}", "output.name=taken"])
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert (tmp_path / "taken.h5").read_bytes() == b"precious"



# Rank 1 stops itself (SIGSTOP, as a stalled file system or device would) while training round 2.
STALL = """
import os, signal
if os.environ.get("PMI_RANK") == "1":
    import fedmpi.worker as w
    original = w.Worker.train_group
    def stalling(self, clients, params, on_device, round_, message=None):
        if round_ == 2:
            with open(os.environ["STALLED_PID_FILE"], "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        return original(self, clients, params, on_device, round_, message)
    w.Worker.train_group = stalling
"""


def test_a_stalled_rank_ends_the_job_within_the_deadline(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(STALL)
    pid_file = tmp_path / "stalled.pid"
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("STALLED_PID_FILE", str(pid_file))
    args = [*TINY_RUN, "server.num_rounds=3", "runtime.phase_timeout=8", f"output.dir={tmp_path}", "output.name=stall"]
    try:
        proc = run_launch(args, ranks=2, timeout=240)
        stopped_at = pid_file.stat().st_mtime
        assert proc.returncode != 0
        assert proc.stderr.count("training: rank 1 did not reach the phase's agreement within 8 s") == 1, proc.stderr
        assert time.time() - stopped_at < 8 + 30  # the deadline, plus the abort and process start-up slack
        run = load_run(tmp_path / "stall.h5")
        assert run.attrs["status"] == "failed" and list(run.rounds["round"]) == [0, 1]
    finally:
        if pid_file.exists():  # never leave a stopped process behind
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


# Slurm signals every task of a step, not all at the same instant: here rank 1 gets SIGTERM while
# training round 2, and rank 0 one second later.
LATE_SIGTERM = """
import os, signal, subprocess
if os.environ.get("PMI_RANK") == "0":
    with open(os.environ["RANK0_PID_FILE"], "w") as f:
        f.write(str(os.getpid()))
if os.environ.get("PMI_RANK") == "1":
    import fedmpi.worker as w
    original = w.Worker.train_group
    def signalled(self, clients, params, on_device, round_, message=None):
        if round_ == 2:
            rank0 = open(os.environ["RANK0_PID_FILE"]).read()
            subprocess.Popen(["sh", "-c", f"sleep 1; kill -TERM {rank0}"])
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, clients, params, on_device, round_, message)
    w.Worker.train_group = signalled
"""


def test_sigterm_reaching_the_ranks_at_different_times_still_marks_the_file_failed(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(LATE_SIGTERM)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("RANK0_PID_FILE", str(tmp_path / "rank0.pid"))
    proc = run_launch([*TINY_RUN, "server.num_rounds=3", f"output.dir={tmp_path}", "output.name=stopped"], ranks=2, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count("fedmpi: stopped by SIGTERM; the result file says failed") == 1, proc.stderr
    run = load_run(tmp_path / "stopped.h5")
    assert run.attrs["status"] == "failed" and "SIGTERM" in run.attrs["error"]
    assert list(run.rounds["round"]) == [0, 1]
