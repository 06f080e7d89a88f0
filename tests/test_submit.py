"""fedmpi.submit: CLI -> submitit parameters, the rendered sbatch text, and one job run end to end.

No Slurm is needed: the sbatch text is rendered offline, a fake ``sbatch``/``srun`` on PATH
stands in for the cluster, and the local run uses submitit's LocalExecutor with a stand-in
for ``fedmpi.launch.main`` (a module written to tmp_path and put on the job's PYTHONPATH).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import submitit

from fedmpi import submit

TYPICAL = ["--nodes", "2", "--tasks-per-node", "4", "--gpus-per-node", "4", "--partition", "gpu",
           "--time", "1:30:00", "--account", "proj1"]


STALE_SHM = f"srun --ntasks-per-node=1 --mpi=none {sys.executable} -m fedmpi.comm.stale_shm"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fedavg_sst2.yaml"
    path.write_text("seed: 0\n")
    return path


def test_slurm_parameters_for_a_typical_command(config: Path) -> None:
    args = submit.build_parser().parse_intermixed_args(["--config", str(config), "seed=1", *TYPICAL])
    assert submit.slurm_parameters(args) == {
        "name": "fedavg_sst2", "nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4, "timeout_min": 90,
        "slurm_partition": "gpu", "slurm_account": "proj1", "slurm_signal_delay_s": 90,
        "slurm_srun_args": ["--mpi=pmi2", "--kill-on-bad-exit=1"], "slurm_setup": [STALE_SHM],
    }  # cpus_per_task and mem left to Slurm when not given
    assert submit.job_argv(args, stamp="T") == [
        "--config", str(config.resolve()), "seed=1", "output.name=fedavg_sst2-T", "output.resume=true"]
    args = submit.build_parser().parse_intermixed_args(["--config", str(config), "output.name=mine", *TYPICAL])
    assert submit.job_argv(args) == ["--config", str(config.resolve()), "output.name=mine", "output.resume=true"]
    # The user's own choice is kept: overwrite (which excludes resume) or resume=false.
    args = submit.build_parser().parse_intermixed_args(["output.overwrite=true", *TYPICAL])
    assert submit.job_argv(args, stamp="T") == ["output.overwrite=true", "output.name=fedmpi-T"]


def test_run_names_differ_within_one_second(config: Path) -> None:
    args = submit.build_parser().parse_intermixed_args(["--config", str(config), *TYPICAL])
    names = {submit.job_argv(args)[2] for _ in range(20)}
    assert len(names) == 20


def test_mpi_mem_signal_delay_and_extra_sbatch_options() -> None:
    args = submit.build_parser().parse_intermixed_args(
        ["--nodes", "1", "--tasks-per-node", "2", "--time", "5", "--mem", "4G", "--mpi", "pmix",
         "--sbatch", "qos=high", "--sbatch=--constraint=a100"])  # fmt: skip
    params = submit.slurm_parameters(args)
    assert params["slurm_srun_args"] == ["--mpi=pmix", "--kill-on-bad-exit=1"]
    assert params["slurm_mem"] == "4G" and params["slurm_additional_parameters"] == {"qos": "high", "constraint": "a100"}
    assert params["slurm_signal_delay_s"] == 60  # 20% of a 5-minute job: never before its handler is up
    lines = submit.sbatch_text("/tmp/x", params).splitlines()
    for expected in ["#SBATCH --mem=4G", "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --signal=USR2@60"]:
        assert expected in lines
    cleanup, main = [line for line in lines if line.startswith("srun ")]
    assert cleanup == STALE_SHM and "--mpi=pmix" in main.split()


def test_a_config_error_is_reported_before_anything_is_queued(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(_fake_bin(tmp_path, ["sbatch", "srun"])))
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["server.num_rounds=0", *TYPICAL, "--log-dir", f"{tmp_path}/logs/%j"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["fedmpi.submit: invalid configuration: server.num_rounds: Input should be greater than or equal to 1"]
    assert not (tmp_path / "logs").exists()


def test_defaults_job_name_and_time() -> None:
    args = submit.build_parser().parse_intermixed_args(
        ["--nodes", "1", "--tasks-per-node", "1", "--cpus-per-task", "8", "--job-name", "mine"])
    assert submit.slurm_parameters(args) == {
        "name": "mine", "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 8, "timeout_min": 60,
        "slurm_signal_delay_s": 90, "slurm_srun_args": ["--mpi=pmi2", "--kill-on-bad-exit=1"], "slurm_setup": [STALE_SHM]}


def test_sbatch_text_pins_the_important_lines(tmp_path: Path) -> None:
    params = {"name": "fedavg_sst2", "nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4, "cpus_per_task": 8,
              "timeout_min": 90, "slurm_partition": "gpu", "slurm_account": "proj1",
              "slurm_srun_args": ["--kill-on-bad-exit=1"]}
    lines = submit.sbatch_text(tmp_path / "%j", params).splitlines()
    for expected in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                     "#SBATCH --account=proj1", "#SBATCH --job-name=fedavg_sst2",
                     "#SBATCH --signal=USR2@90",  # submitit's preemption/timeout signal -> requeue
                     f"#SBATCH --output={tmp_path}/%j/%j_0_log.out"]:
        assert expected in lines
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1  # one srun: every task is one MPI rank running the pickled FedmpiJob
    assert srun[0].startswith(f"srun --unbuffered --output {tmp_path}/%j/%j_%t_log.out")
    assert "--kill-on-bad-exit=1" in srun[0].split()  # one failing rank ends the job, no hang
    assert srun[0].endswith(f"-u -m submitit.core._submit {tmp_path}/%j")
    assert not (tmp_path / "%j").exists()  # rendering writes nothing


@pytest.mark.parametrize("text, minutes", [
    ("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("30:30", 31), ("1-12", 2160), ("1-0:30", 1470),
    ("0:0:1", 1)])
def test_parse_time(text: str, minutes: int) -> None:
    assert submit.parse_time(text) == minutes


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "0", "--tasks-per-node", "1"], "argument --nodes: must be >= 1, got 0"),
    (["--nodes", "1", "--tasks-per-node", "0"], "argument --tasks-per-node: must be >= 1"),
    (["--nodes", "1", "--tasks-per-node", "two"], "argument --tasks-per-node: invalid integer 'two'"),
    (["--nodes", "1", "--tasks-per-node", "1", "--time", "1:75:00"], "argument --time: invalid time '1:75:00'"),
    (["--nodes", "1", "--tasks-per-node", "1", "--time", "1-24"], "argument --time: invalid time '1-24'"),
    (["--nodes", "1", "--tasks-per-node", "1", "--time", "1h"], "argument --time: invalid time '1h'"),
    (["--nodes", "1", "--tasks-per-node", "1", "--time", "0"], "argument --time: invalid time '0'"),
    (["--nodes", "1", "--tasks-per-node", "1", "--config", "missing.yaml"], "--config: file not found"),
    (["--nodes", "1", "--tasks-per-node", "1", "rounds"], "override 'rounds' must look like key.sub=value"),
    (["--tasks-per-node", "1"], "the following arguments are required: --nodes"),
])
def test_bad_arguments_exit_2_naming_the_flag(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        submit.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_dry_run_prints_parameters_and_sbatch(config: Path, tmp_path: Path, capsys) -> None:
    assert submit.main(["--config", str(config), "seed=1", *TYPICAL, "--log-dir", f"{tmp_path}/logs/%j",
                        "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"timeout_min": 90' in out and '"slurm_partition": "gpu"' in out
    assert f"fedmpi.launch argv: --config {config.resolve()} seed=1" in out
    assert "#SBATCH --ntasks-per-node=4" in out.splitlines()
    assert not (tmp_path / "logs").exists()


def _fake_bin(tmp_path: Path, names: list[str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text('#!/bin/sh\necho "Submitted batch job 4242"\n')
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_submits_through_sbatch_when_slurm_is_there(config: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(_fake_bin(tmp_path, ["sbatch", "srun"])))
    assert submit.main(["--config", str(config), *TYPICAL, "--log-dir", f"{tmp_path}/logs/%j"]) == 0
    out = capsys.readouterr().out
    assert "Submitted Slurm job 4242: 2 node(s) x 4 rank(s)" in out and f"{tmp_path}/logs/4242" in out
    assert "Results: " in out and "/results/fedavg_sst2-" in out
    assert "#SBATCH --ntasks-per-node=4" in (tmp_path / "logs/4242/4242_submission.sh").read_text()
    with open(tmp_path / "logs/4242/4242_submitted.pkl", "rb") as f:
        job = pickle.load(f).function
    assert isinstance(job, submit.FedmpiJob) and isinstance(job, submitit.helpers.Checkpointable)
    assert job.argv[:2] == ["--config", str(config.resolve())] and job.entry == "fedmpi.launch:main"
    assert job.argv[2].startswith("output.name=fedavg_sst2-")  # a fixed name, so a requeue finds its file
    assert job.argv[3] == "output.resume=true"  # submitted resumable: a plain Slurm requeue resumes too
    assert job.argv[4].startswith("output.dir=/")  # absolute: the job's cwd does not matter
    requeued = job.checkpoint().function  # submitit's timeout path: the same run, resumed
    assert sorted(requeued.argv) == sorted(job.argv)
    assert requeued.checkpoint().function.argv == requeued.argv  # not repeated on a second requeue


def test_without_slurm_submission_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(_fake_bin(tmp_path, [])))
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["--nodes", "1", "--tasks-per-node", "1", "--log-dir", str(tmp_path / "logs")])
    assert exit_info.value.code == 2
    assert "--dry-run" in capsys.readouterr().err


STAND_IN = """
import json, os
def main(argv):
    with open(os.environ["FAKE_LAUNCH_OUT"], "w") as f:
        json.dump({"argv": argv, "executor": os.environ.get("SUBMITIT_EXECUTOR")}, f)
    return int(os.environ.get("FAKE_LAUNCH_CODE", "0"))
"""


@pytest.mark.parametrize("code", [0, 3])
def test_local_run_end_to_end(code: int, config: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "fake_launch.py").write_text(STAND_IN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_LAUNCH_OUT", str(tmp_path / "ran.json"))
    monkeypatch.setenv("FAKE_LAUNCH_CODE", str(code))
    monkeypatch.setattr(submit, "FedmpiJob", functools.partial(submit.FedmpiJob, entry="fake_launch:main"))
    argv = ["--config", str(config), "seed=1", *TYPICAL, "--local", "--log-dir", f"{tmp_path}/logs/%j"]
    assert submit.main(argv) == (1 if code else 0)
    ran = json.loads((tmp_path / "ran.json").read_text())
    assert ran["executor"] == "local"
    assert ran["argv"][:3] == ["--config", str(config.resolve()), "seed=1"] and ran["argv"][3].startswith("output.name=")
    captured = capsys.readouterr()
    assert "--local runs 1 rank" in captured.out
    if code:
        assert "exited with code 3" in captured.err
