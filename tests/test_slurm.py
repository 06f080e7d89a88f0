"""Against a real Slurm (scripts/slurm_single_node.sh starts one): submission gives one N-rank world,
a requeued job resumes to the same results, scancel leaves a readable file, bad configs never queue.

Skipped, with the reason, where no Slurm answers (no ``sinfo``, or no idle node).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_RUN, run_here
from test_end_to_end import _same

from fedmpi.analyze import ResultFileError, load_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RUN = [a for a in TINY_RUN if not a.startswith("runtime.num_threads")] + ["runtime.phase_timeout=120"]


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (sinfo/sbatch not found): run scripts/slurm_single_node.sh as root to start one"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout.split()
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"Slurm does not answer ({exc}): run scripts/slurm_single_node.sh"
    if not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"Slurm has no usable node (sinfo: {states or 'nothing'}): run scripts/slurm_single_node.sh"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    if problem := _slurm_problem():
        pytest.skip(problem)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "VENV": str(Path(sys.executable).parents[1])}


def _job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    return "GONE"


def _wait(job_id: str, states: tuple[str, ...], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (state := _job_state(job_id)) not in states:
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        time.sleep(1)
    return state


def _wait_for_round(path: Path, round_: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(rounds := load_run(path).rounds["round"]) and rounds[-1] >= round_:
                return
        except ResultFileError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{path} never reached round {round_}")


def _sbatch(tmp_path: Path, name: str, *overrides: str) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--output={tmp_path}/%j.out", f"--export=ALL,NAME={name}",
         str(REPO / "slurm/fedmpi.sbatch"), *RUN, f"output.dir={tmp_path}", *overrides],
        cwd=REPO, env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.strip().split(";")[0]


def _submit(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fedmpi.submit", "--nodes", "1", "--tasks-per-node", "2", "--time", "10",
           "--mem", "2G", "--log-dir", f"{tmp_path}/logs/%j", *RUN, f"output.dir={tmp_path}", *argv]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)


def test_submit_runs_one_two_rank_world(tmp_path):
    proc = _submit(tmp_path, "output.name=submitted")
    assert proc.returncode == 0, proc.stderr
    assert f"Results: {tmp_path}/submitted.h5" in proc.stdout
    job_id = proc.stdout.split("Submitted Slurm job ")[1].split(":")[0]
    _wait(job_id, ("COMPLETED", "FAILED", "CANCELLED", "GONE"))
    run = load_run(tmp_path / "submitted.h5")
    assert run.complete and run.attrs["num_ranks"] == 2, (tmp_path / "logs").rglob("*")


def test_sbatch_template_unedited_gives_one_two_rank_world_and_requeue_resumes(tmp_path):
    job = _sbatch(tmp_path, "requeued", "server.num_rounds=4")
    _wait_for_round(tmp_path / "requeued.h5", 1)
    subprocess.run(["scontrol", "requeue", job], check=True)  # SIGTERM now, the same job id again later
    # What the job must end with: the same run without a stop, here while Slurm requeues (results do not
    # depend on the number of ranks; the template gives each rank one thread).
    whole = run_here([*RUN, "runtime.num_threads=1", "server.num_rounds=4", f"output.dir={tmp_path}", "output.name=whole"])
    _wait(job, ("COMPLETED", "FAILED", "CANCELLED", "GONE"), timeout=600)
    run = load_run(tmp_path / "requeued.h5")
    assert run.complete and run.attrs["num_ranks"] == 2, (tmp_path / f"{job}.out").read_text()
    assert len(run.attrs["resumed_num_ranks"]) >= 1  # it really was resumed, not restarted
    _same(whole, tmp_path / "requeued.h5")


def test_scancel_leaves_a_readable_file(tmp_path):
    job = _sbatch(tmp_path, "cancelled", "server.num_rounds=50")
    _wait_for_round(tmp_path / "cancelled.h5", 1)
    subprocess.run(["scancel", job], check=True)
    _wait(job, ("CANCELLED", "FAILED", "COMPLETED", "GONE"))
    # Slurm may report CANCELLED while the job's SIGTERM handler is still writing the status:
    # give it Slurm's default KillWait (30 s) before SIGKILL would end it.
    deadline = time.monotonic() + 30
    while (run := load_run(tmp_path / "cancelled.h5")).attrs["status"] == "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert run.attrs["status"] == "failed" and len(run.rounds["round"]) >= 2


def test_a_config_error_never_reaches_the_queue(tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    proc = _submit(tmp_path, "server.num_rounds=0")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "fedmpi.submit: invalid configuration: server.num_rounds: Input should be greater than or equal to 1"]
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split() == before
    assert not (tmp_path / "logs").exists()
