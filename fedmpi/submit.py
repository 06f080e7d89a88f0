"""Slurm submission of a fedmpi run through submitit: CLI flags -> submitit parameters -> one job.

One Slurm task is one MPI rank: ``srun --mpi=<--mpi>`` starts ``nodes * tasks_per_node``
copies of ``python -m submitit.core._submit``, each unpickles a :class:`FedmpiJob` and calls
``fedmpi.launch.main(argv)``, and mpi4py joins them into one world through that PMI (pmi2
suits the PyPI mpich wheel and most MPIs). The config is validated here, before anything is
queued, and every job is submitted resumable under a name fixed at submission, so a
preempted, requeued or timed-out job continues its own result file. Nothing device-specific
is set here: the launcher picks each rank's GPU from its node-local rank.
``slurm/fedmpi.sbatch`` is the same job without submitit.

    python -m fedmpi.submit --config configs/x.yaml rounds=50 --nodes 2 --tasks-per-node 4 \\
        --gpus-per-node 4 --partition gpu --time 2:00:00 [--dry-run | --local]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.slurm.slurm import SlurmExecutor

from fedmpi.config import ConfigError, load_config
from fedmpi.output_files import unique_stamp

# A requeued job resumes from its last round (output.resume), so a run longer than the time
# limit continues over several allocations; preemptions are requeued without counting here.
MAX_NUM_TIMEOUT = 10
DEFAULT_TIME_MIN = 60  # submitit's own default would be 5 minutes
# submitit's pre-timeout signal (USR2) comes this long before the time limit, but never in the
# first 80% of a short job: a signal that arrives before the job has installed its handler
# would kill the job instead of requeueing it.
SIGNAL_DELAY_S = 90
SIGNAL_DELAY_SHARE = 0.2
_TIME_RE = re.compile(r"(?:(\d+)-)?(\d+(?::\d+){0,2})")


@dataclass
class FedmpiJob(submitit.helpers.Checkpointable):
    """The callable each Slurm task runs: ``entry(argv)``, by default ``fedmpi.launch.main``.

    Checkpointable: when Slurm preempts the job or its time runs out, submitit calls
    ``checkpoint`` and requeues the job with ``output.resume=true``, so it continues from the
    last completed round of the same result file (``job_argv`` pins ``output.name``).
    """

    argv: list[str]
    entry: str = "fedmpi.launch:main"  # "module:function"; imported lazily inside the job

    def __call__(self) -> int:
        module, function = self.entry.split(":")
        code = getattr(importlib.import_module(module), function)(self.argv)
        if code:  # make a failed run a failed submitit job rather than a returned number
            raise RuntimeError(f"{self.entry}{tuple(self.argv)} exited with code {code}")
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # job_argv already asks for output.resume=true; this keeps jobs built elsewhere resumable too.
        resume = [a for a in self.argv if not a.startswith("output.resume=")] + ["output.resume=true"]
        return submitit.helpers.DelayedSubmission(FedmpiJob(resume, self.entry))


def parse_time(text: str) -> int:
    """Slurm ``--time`` ("M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S") -> whole minutes."""
    match = _TIME_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use minutes, H:MM:SS or D-HH:MM:SS (e.g. 90, 1:30:00, 2-00:00:00)")
    days, clock = match.groups()
    parts = [int(p) for p in clock.split(":")]
    if days is None:  # Slurm reads "M", "M:S" and "H:M:S"; the leading field is unbounded
        hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    else:  # Slurm reads "D-H", "D-H:M" and "D-H:M:S"
        hours, minutes, seconds = (parts + [0, 0])[:3]
    if any(field >= 60 for field in parts[1:]) or (days is not None and hours >= 24):
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: a field is out of range")
    total_s = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    if total_s <= 0:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: must be positive")
    return math.ceil(total_s / 60)


def _int_at_least(minimum: int) -> Callable[[str], int]:  # argparse names the flag on error
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedmpi.submit", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for fedmpi.launch")
    p.add_argument("--config", type=Path, help="YAML config passed to fedmpi.launch")
    p.add_argument("--nodes", type=_int_at_least(1), required=True)
    p.add_argument("--tasks-per-node", type=_int_at_least(1), required=True, help="MPI ranks per node")
    p.add_argument("--gpus-per-node", type=_int_at_least(0))
    p.add_argument("--cpus-per-task", type=_int_at_least(1), help="default: Slurm's; each rank's thread count")
    p.add_argument("--mem", help="memory per node, Slurm's form (16G, 4000M); default: Slurm's")
    p.add_argument("--mpi", default="pmi2", help="srun --mpi plugin that wires the ranks into one MPI world (default: pmi2)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, repeatable: --sbatch qos=high --sbatch constraint=a100")
    p.add_argument("--partition")
    p.add_argument("--time", type=parse_time, default=DEFAULT_TIME_MIN,
                   help=f"M, H:MM:SS or D-HH:MM:SS (default: {DEFAULT_TIME_MIN} minutes)")
    p.add_argument("--account")
    p.add_argument("--job-name", help="default: the config file's name")
    p.add_argument("--log-dir", default="results/slurm/%j", help="submitit folder (%%j: job id)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print parameters and sbatch text only")
    mode.add_argument("--local", action="store_true", help="run one rank here via submitit's LocalExecutor")
    return p


def slurm_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """AutoExecutor parameters (generic names, ``slurm_`` prefix for Slurm-only ones)."""
    params: dict[str, Any] = {
        "name": job_name(args),
        "nodes": args.nodes,
        "tasks_per_node": args.tasks_per_node,
        "timeout_min": args.time,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "slurm_partition": args.partition,
        "slurm_account": args.account,
        "slurm_mem": args.mem,
        "slurm_signal_delay_s": min(SIGNAL_DELAY_S, max(1, int(args.time * 60 * SIGNAL_DELAY_SHARE))),
        # --mpi: without a PMI each task would be its own 1-rank world. --kill-on-bad-exit: a
        # rank that raises exits non-zero and srun ends the others instead of leaving them
        # blocked in a collective until the time limit.
        "slurm_srun_args": [f"--mpi={args.mpi}", "--kill-on-bad-exit=1"],
        "slurm_additional_parameters": sbatch_options(args.sbatch) or None,
        # A killed step can leave MPICH's shared memory behind, which the requeued step (same
        # job and step ids) would trip over in MPI_Init: remove unused ones on every node first.
        "slurm_setup": [f"srun --ntasks-per-node=1 --mpi=none {sys.executable} -m fedmpi.comm.stale_shm"],
    }
    return {key: value for key, value in params.items() if value is not None}


def sbatch_options(pairs: list[str]) -> dict[str, str]:
    """``["qos=high", "constraint=a100"]`` -> {"qos": "high", "constraint": "a100"} (sbatch --qos=high ...)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--sbatch {pair!r}: use KEY=VALUE, e.g. --sbatch qos=high")
        options[key.removeprefix("--").replace("-", "_")] = value
    return options


def job_name(args: argparse.Namespace) -> str:
    return args.job_name or (args.config.stem if args.config else "fedmpi")


def job_argv(args: argparse.Namespace, stamp: str | None = None) -> list[str]:
    """The argv of ``fedmpi.launch.main``.

    The config path is made absolute so the job's cwd does not matter; the run gets a
    fixed ``output.name`` (unless one is given; the stamp is unique even within a second)
    and ``output.resume=true``, so that however the job is restarted (requeue, preemption,
    timeout) it continues the same file, and starts it when there is nothing yet.
    """
    argv = (["--config", str(args.config.resolve())] if args.config else []) + list(args.overrides)
    if not any(a.startswith("output.name=") for a in argv):
        argv.append(f"output.name={job_name(args)}-{stamp or unique_stamp()}")
    if not any(a.startswith(("output.resume=", "output.overwrite=")) for a in argv):
        argv.append("output.resume=true")
    return argv


def build_executor(folder: str | Path, params: dict[str, Any], cluster: str = "slurm") -> submitit.AutoExecutor:
    """An AutoExecutor for ``cluster`` ("slurm", "local" or "debug") with ``params`` applied."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=MAX_NUM_TIMEOUT)
    executor.update_parameters(**params)
    return executor


class _SbatchRenderer(SlurmExecutor):
    """A SlurmExecutor that can be built where ``srun`` is missing; used only to render text."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def sbatch_text(folder: str | Path, params: dict[str, Any]) -> str:
    """The sbatch file submitit would submit for ``params`` (the same conversion as AutoExecutor's)."""
    renderer = _SbatchRenderer(folder, max_num_timeout=MAX_NUM_TIMEOUT)
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    specific = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
    renderer.update_parameters(**renderer._convert_parameters(generic), **specific)
    return renderer._make_submission_file_text(renderer._submitit_command_str, uid="dry-run")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config: file not found: {args.config}")
    for override in args.overrides:
        if "=" not in override:
            parser.error(f"override {override!r} must look like key.sub=value")
    try:
        params, launch_argv = slurm_parameters(args), job_argv(args)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    try:  # the job would fail on this in seconds, after waiting in the queue: fail here instead
        cfg = load_config(args.config, launch_argv[2:] if args.config else launch_argv)
    except ConfigError as error:
        parser.exit(2, f"fedmpi.submit: {error}\n")
    results = Path(cfg.output.dir).resolve() / f"{cfg.output.name}.h5"
    launch_argv.append(f"output.dir={results.parent}")  # the job's cwd must not matter

    if args.dry_run:
        print("submitit parameters:\n" + json.dumps(params, indent=2))
        print("fedmpi.launch argv: " + " ".join(launch_argv))
        print(f"results: {results}")
        print("sbatch file:\n" + sbatch_text(args.log_dir, params))
        return 0

    if args.local:  # LocalExecutor starts no MPI world, so several tasks would be separate runs
        if args.nodes * args.tasks_per_node > 1:
            print("--local runs 1 rank; for N ranks here: mpiexec -n N python -m fedmpi.launch ...")
        params = {**params, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": args.gpus_per_node or 0}
        job = build_executor(args.log_dir, params, cluster="local").submit(FedmpiJob(launch_argv))
        print(f"Running local job {job.job_id}; logs: {job.paths.stdout}")
        try:
            job.result()
        except Exception as error:  # submitit re-raises the job's failure with its traceback
            print(f"Local job failed: {error}", file=sys.stderr)
            return 1
        print("Local job finished.")
        return 0

    try:
        executor = build_executor(args.log_dir, params, cluster="slurm")
    except RuntimeError as error:  # submitit: 'Could not detect "srun"'
        parser.error(f"{error} Use --dry-run to inspect the job or --local to run it here.")
    job = executor.submit(FedmpiJob(launch_argv))
    print(f"Submitted Slurm job {job.job_id}: {args.nodes} node(s) x {args.tasks_per_node} rank(s)")
    print(f"Logs: {job.paths.folder} (rank 0: {job.paths.stdout.name}, rank r: {job.job_id}_<r>_log.out)")
    print(f"Results: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
